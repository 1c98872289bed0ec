"""How the end of a ``train`` command reaches the user: its exit status and its last lines.

Two wrappers hold every rule, so that ``train.py`` holds none:

- :func:`task_wrapper` wraps the task function Hydra runs once per job (once for a single run);
- :func:`run_command` wraps the whole command, Hydra included, and sets the exit status.

The exit status of ``train``:

==========  ===============================================================================
0           the run (every job of a sweep) finished, or a finished run had nothing left to do
2           a :class:`~brisk.errors.UserError`: one line ``brisk: error: ...``, no traceback
128 + n     a run, or a parallel sweep, stopped by signal n after saving (143 for SIGTERM)
1           anything else: a bug keeps its traceback
==========  ===============================================================================

A user error is recognised also when a library wrapped it (Hydra's ``instantiate`` raises
``InstantiationException`` from the ``UserError`` a model's constructor raised). Its traceback
goes to ``status.json`` (``"traceback"``) and the run's ``train.log``, written by ``train`` while
it holds the run directory; the console gets the one line. Hydra's ``run_and_report`` would print
a traceback for any exception that leaves the task function, so a single run exits with
``SystemExit(2)`` (which Hydra lets through), and a job of a sweep fails as a Hydra job
(:class:`FailedJob`): the sweep runs its other jobs, its summary lists the failure, Hydra
re-raises the first failure at the end without a traceback, and the sweep exits with 2 when that
first failure is a user error (1 otherwise), whether the job ran in this process or, with
``hydra/launcher=parallel``, in a worker of its own. ``HYDRA_FULL_ERROR=1`` prints the
traceback as well.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from brisk.errors import USER_ERROR_EXIT, UserError
from brisk.run.signals import (
    SWEEP_PID_ENV,
    RunInterrupted,
    exit_code,
    guard_idle_worker,
    in_sweep_worker,
    request_sweep_stop,
    signal_name,
    sweep_stop_file,
    sweep_stop_signal,
)

log = logging.getLogger("brisk")

# Failed jobs of this process in order, True for a user error (the basic launcher runs a sweep's
# jobs here, one after the other; Hydra reports the first failure).
_failures: list[bool] = []


class FailedJob(CompactHydraException):
    """A sweep job stopped by a user error; Hydra prints only this message when it re-raises it."""


def task_wrapper(task: Callable[[DictConfig], float]) -> Callable[[DictConfig], float]:
    """The task function Hydra runs for each job, around ``task`` (``brisk.train.train``).

    - a job of a stopped parallel sweep does not start;
    - a run stopped by a signal (``task`` saved it and raised
      :class:`~brisk.run.signals.RunInterrupted`) asks the rest of its sweep to stop, then exits
      with 128 + n, or, in a sweep's worker process, returns, which keeps the pool of workers
      whole (an exit would get the other jobs killed);
    - a user error is reported in one line (:func:`report_user_error`);
    - anything else is counted and re-raised with its traceback.
    """

    @functools.wraps(task)
    def run_task(cfg: DictConfig) -> float:
        guard_idle_worker()
        stopped_by = sweep_stop_signal()
        if stopped_by is not None:  # a stopped parallel sweep: this job waits for the next run
            log.info("not started: the sweep was stopped by %s", signal_name(stopped_by))
            return math.nan
        try:
            return task(cfg)
        except RunInterrupted as stopped:
            request_sweep_stop(stopped.signum)  # the other jobs of a parallel sweep too
            if in_sweep_worker():
                # saved and recorded as interrupted; returning keeps Hydra from reporting a failed
                # job with its error banner, and `run_command` ends the sweep with one line
                return math.nan
            raise SystemExit(stopped.exit_code) from None
        except Exception as exc:
            err = user_error_in(exc)
            if err is None:
                note_other_failure()
                raise
            report_user_error(err)

    return run_task


def run_command(hydra_main: Callable[[], object], overrides: list[str]) -> None:
    """Run the Hydra entry point ``hydra_main`` and end with the exit status of the table above.

    :func:`explain_failure` is called here, once, for every failure that is not a user error
    already explained in one line.
    """
    failure: BaseException | None = None
    try:
        hydra_main()
    except SystemExit as exit_:
        failure = exit_
    except Exception as exc:  # HYDRA_FULL_ERROR=1 lets the exception through instead of exiting
        failure = exc
    exit_if_sweep_stopped()
    if failure is None:
        return
    code = failure.code if isinstance(failure, SystemExit) else 1
    if code in (0, None, USER_ERROR_EXIT):
        raise failure
    explain_failure(overrides)
    if isinstance(failure, SystemExit) and first_failure_was_user_error():
        raise SystemExit(USER_ERROR_EXIT) from None  # the sweep failure Hydra reported
    raise failure


def user_error_in(exc: BaseException) -> UserError | None:
    """``exc`` itself when it is a user error, else the user error it was raised from, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def exit_if_sweep_stopped() -> None:
    """In the process that ran a parallel sweep: if a signal stopped it, say how to continue and
    exit with 128 + its number, as a single run does."""
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
    """Print ``err`` in one line and end the job: exit 2, or a failed job of a sweep.

    Call it from an ``except`` block (with ``HYDRA_FULL_ERROR=1`` it prints the active traceback).
    """
    _failures.append(True)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_error:
        traceback.print_exc()
    print(f"brisk: error: {err}", file=sys.stderr, flush=True)
    if _is_multirun():
        if full_error:
            raise err
        raise FailedJob(f"brisk: error: {err}") from err
    raise SystemExit(USER_ERROR_EXIT) from err


def fail_sweep(err: UserError) -> NoReturn:
    """The submitting side of a sweep met a user error (a launcher refused by the cluster): one
    line, and the sweep fails with exit status 2."""
    _failures.append(True)
    raise FailedJob(f"brisk: error: {err}") from err


def note_other_failure() -> None:
    """Count a job that failed on something else (a bug keeps Hydra's traceback and status 1)."""
    _failures.append(False)


def note_job_failure(user_error: bool) -> None:
    """Count a sweep job that failed in a process of its own (``hydra/launcher=parallel``): its
    worker counted it there, but the exit status is decided here."""
    _failures.append(user_error)


def first_failure_was_user_error() -> bool:
    """Whether the failure Hydra reports at the end of a sweep is a user error."""
    return bool(_failures) and _failures[0]


def log_failure_to_file(exc: BaseException) -> None:
    """The run's log file (not the console) gets the traceback of the failure that ended it."""
    message = f"{type(exc).__name__}: {exc}"
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, "%s", (message,), (type(exc), exc, exc.__traceback__)
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _is_multirun() -> bool:
    if not HydraConfig.initialized():
        return False
    mode = HydraConfig.get().mode
    return str(getattr(mode, "name", mode)) == "MULTIRUN"


def explain_failure(overrides: list[str]) -> None:
    """After Hydra's message: the valid keys for a misspelt one, the pip extra for a plugin."""
    from brisk.config.diagnose import explain_unknown_keys
    from brisk.config.extras import missing_extra_messages

    for message in explain_unknown_keys(overrides) + missing_extra_messages(overrides):
        print(f"brisk: {message}", file=sys.stderr)
