"""Stop a run cleanly when the cluster (or a person) asks it to.

SLURM, Kubernetes and ``torchrun`` send SIGTERM some time before they kill a job; SLURM's
``--signal=USR1@90`` sends SIGUSR1; a person presses Ctrl-C (SIGINT). :class:`StopSignals` turns the
first of these into a request that the training loop reads between steps: it finishes the step it is
in, writes ``last.pt`` at that step and ends with status ``interrupted`` and the exit code a shell
expects from that signal (128 + signum: 143 for SIGTERM, 130 for SIGINT). A second signal while the
first is being honoured ends the process at once, with the signal's default action and no traceback.

Under ``torchrun`` the ranks may receive the signal at different steps; :meth:`StopSignals.agreed`
all-reduces the flag so that every rank stops after the same step and saves the same state.

The jobs of a parallel sweep (``hydra/launcher=parallel``) run in worker processes that one
signal may or may not reach. A sweep-wide stop request is therefore a file, ``<sweep dir>/.stop``
holding the signal number, named to the jobs by ``BRISK_SWEEP_STOP``: the submitting process
writes it when it is signalled (:mod:`brisk.sweep.stop`), a job writes it when it is, and every
running job reads it between steps as if the signal had reached it. So no job is killed mid-step
by the pool breaking up, and no new job starts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from brisk.runtime import is_distributed

log = logging.getLogger("brisk")

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class RunInterrupted(Exception):
    """Raised by the loop once it saved its state after a stop signal; carries what status.json
    says."""

    def __init__(self, signum: int, step: int, checkpoint: str | None = None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"stopped by {signal_name(signum)} after step {step}"
            + (f"; continue with resume=auto (last checkpoint {checkpoint})" if checkpoint else "")
        )

    @property
    def exit_code(self) -> int:
        """The code a shell reports for a process ended by this signal."""
        return exit_code(self.signum)


def signal_name(signum: int) -> str:
    """The signal's name (``SIGTERM``) for logs and status.json; a number the platform lacks a
    name for stays a number.
    """
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The exit status a shell gives a process killed by ``signum`` (128 + n), which schedulers
    and wrappers recognise.
    """
    return 128 + int(signum)


SWEEP_STOP_ENV = "BRISK_SWEEP_STOP"  # path of the sweep's stop file, set for its jobs
SWEEP_PID_ENV = "BRISK_SWEEP_PID"  # the submitting process: jobs in other processes are workers


def sweep_stop_file() -> Path | None:
    """The stop file of the sweep this process runs jobs of, or None outside a sweep."""
    path = os.environ.get(SWEEP_STOP_ENV)
    return Path(path) if path else None


def sweep_stop_signal() -> int | None:
    """The signal the sweep was stopped by, or None while it runs (or outside a sweep)."""
    path = sweep_stop_file()
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else int(signal.SIGTERM)


def request_sweep_stop(signum: int) -> None:
    """Ask every job of this sweep to stop, and none to start (a no-op outside a sweep)."""
    path = sweep_stop_file()
    if path is not None and sweep_stop_signal() is None:
        try:
            path.write_text(f"{int(signum)}\n")
        except OSError:
            log.warning("could not write the sweep's stop file %s", path, exc_info=True)


def in_sweep_worker() -> bool:
    """Whether this process runs a sweep's jobs for another process (a joblib worker): its jobs
    must end by returning, not by exiting the process, which would break the pool of workers."""
    parent = os.environ.get(SWEEP_PID_ENV)
    return sweep_stop_file() is not None and parent is not None and parent != str(os.getpid())


def guard_idle_worker() -> None:
    """In a sweep worker, turn a stop signal that arrives between jobs into a sweep stop request.

    Python's default SIGINT handler (KeyboardInterrupt) or SIGTERM's default action would end the
    worker, and the pool would then kill the workers still saving their jobs. Installed once per
    worker; :class:`StopSignals` puts it back after each job.
    """
    if not in_sweep_worker() or threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not _idle_worker_handler:
            signal.signal(sig, _idle_worker_handler)


def _idle_worker_handler(signum: int, frame: FrameType | None) -> None:
    request_sweep_stop(signum)


class StopSignals:
    """A stop request set by SIGTERM, SIGINT or SIGUSR1, installed for the duration of a ``with``.

    Handlers can only be installed from the main thread; elsewhere (a launcher thread) the object
    still works as a flag that nothing sets, so the run behaves as before.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ installation
    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # the second request: the person (or the scheduler) does not want to wait
            log.warning("%s again: exiting now without saving", signal_name(signum))
            for handler in logging.getLogger().handlers:
                handler.flush()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning(
            "%s received: finishing the current step, then saving last.pt (send it again to "
            "exit at once)",
            signal_name(signum),
        )

    # ------------------------------------------------------------------ queries
    @property
    def requested(self) -> bool:
        """This process received a stop signal, or its sweep was asked to stop (no communication
        with other ranks)."""
        self._read_sweep_stop()
        return self.signum is not None

    def _read_sweep_stop(self) -> None:
        if self.signum is None:
            self.signum = sweep_stop_signal()

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if ``signum`` had arrived (tests, or a launcher's own requeue)."""
        if self.signum is None:
            self.signum = int(signum)

    def agreed(self) -> bool:
        """Whether any rank asked to stop; every rank gets the same answer at the same step.

        In a single process this reads a Python attribute only. Under ``torchrun`` it is one small
        all-reduce (on the device the process group uses), so call it at the same points on all
        ranks.
        """
        if not is_distributed():
            return self.requested
        backend = torch.distributed.get_backend()
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        self._read_sweep_stop()
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        value = int(flag.item())
        if value and self.signum is None:
            self.signum = value  # another rank was signalled: stop with its signal
        return bool(value)


class NeverStop(StopSignals):
    """The stop request of code that runs a Trainer outside a signal scope (tests, notebooks)."""

    def __init__(self) -> None:
        super().__init__(signals=())
