"""How the ``train`` command reports a :class:`~brisk.errors.UserError`: one line, exit status 2.

Hydra's ``run_and_report`` prints a traceback for any exception that leaves the task function, even
before a message that already says what to fix. A user error is therefore caught inside the task
function and handled here:

- its traceback goes to ``status.json`` (``"traceback"``) and to the run's ``train.log``;
- ``brisk: error: <message>`` goes to stderr;
- a single run exits with status 2 (``SystemExit`` passes through Hydra untouched);
- a job of a sweep fails as a Hydra job instead, so the sweep runs its other jobs and its summary
  lists the failure; Hydra re-raises the first failure at the end, printed without a traceback, and
  the sweep exits with 2 when that first failure is a user error (1 when it is anything else).

``HYDRA_FULL_ERROR=1`` prints the traceback as well.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException

from brisk.errors import USER_ERROR_EXIT, UserError

log = logging.getLogger("brisk")

# Failed jobs of this process in order, True for a user error (the basic launcher runs a sweep's
# jobs here, one after the other; Hydra reports the first failure).
_failures: list[bool] = []


class FailedJob(CompactHydraException):
    """A sweep job stopped by a user error; Hydra prints only this message when it re-raises it."""


class SweepStopped(Exception):
    """A job of a parallel sweep that a stop signal ended after saving: its worker returns to the
    pool instead of exiting (an exit would break the pool and get the other jobs killed)."""


def exit_if_sweep_stopped() -> None:
    """In the process that ran a parallel sweep: if a signal stopped it, say how to continue and
    exit with 128 + its number, as a single run does."""
    from brisk.run.signals import (
        SWEEP_PID_ENV,
        exit_code,
        signal_name,
        sweep_stop_file,
        sweep_stop_signal,
    )

    signum = sweep_stop_signal()
    if signum is None or os.environ.get(SWEEP_PID_ENV) != str(os.getpid()):
        return
    path = sweep_stop_file()
    assert path is not None  # a signal was read from it
    path.unlink(missing_ok=True)
    print(
        f"brisk: the sweep in {path.parent} was stopped by {signal_name(signum)}: every running "
        "job saved last.pt at its last step; the same command continues it",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(exit_code(signum))


def report_user_error(err: UserError) -> NoReturn:
    """Record ``err`` for the current Hydra job, print it in one line, and end the job.

    Call it from the task function's ``except UserError`` block (it reads the active traceback).
    """
    _failures.append(True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _record_failure(run_dir, f"{type(err).__name__}: {err}")
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_error:
        traceback.print_exc()
    print(f"brisk: error: {err}", file=sys.stderr, flush=True)
    if _is_multirun():
        if full_error:
            raise err
        raise FailedJob(f"brisk: error: {err}") from err
    raise SystemExit(USER_ERROR_EXIT) from err


def note_other_failure() -> None:
    """Count a job that failed on something else (a bug keeps Hydra's traceback and status 1)."""
    _failures.append(False)


def first_failure_was_user_error() -> bool:
    """Whether the failure Hydra reports at the end of a sweep is a user error."""
    return bool(_failures) and _failures[0]


def _record_failure(run_dir: Path, message: str) -> None:
    """status.json (unless it holds a finished run's record) and train.log get the traceback."""
    from brisk.run.records import write_status

    status = run_dir / "status.json"
    try:
        finished = json.loads(status.read_text()).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        finished = False
    if not finished and int(os.environ.get("RANK", "0")) == 0:
        try:
            write_status(run_dir, status="failed", error=message, traceback=traceback.format_exc())
        except (OSError, ValueError):
            log.warning("could not record the failure in %s", status, exc_info=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), sys.exc_info())
    for handler in logging.getLogger().handlers:  # the run's log file, not the console
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _is_multirun() -> bool:
    mode = HydraConfig.get().mode
    return str(getattr(mode, "name", mode)) == "MULTIRUN"


def explain_failure(overrides: list[str]) -> None:
    """After Hydra's message: the valid keys for a misspelt one, the pip extra for a plugin."""
    from brisk.config.diagnose import explain_unknown_keys
    from brisk.config.extras import missing_extra_messages

    for message in explain_unknown_keys(overrides) + missing_extra_messages(overrides):
        print(f"brisk: {message}", file=sys.stderr)
