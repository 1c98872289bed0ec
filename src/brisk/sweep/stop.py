"""Stop a parallel sweep (``hydra/launcher=parallel``) without losing any job's work.

Its jobs run in joblib worker processes. Left alone, a signal ends whichever processes it reaches:
the first worker to exit breaks the pool, and joblib then kills the other workers with SIGKILL,
in the middle of their steps or their saves; a job that was not signalled loses everything since
its last checkpoint. This callback, registered in ``conf/hydra/default.yaml``, turns a stop signal
to the submitting process, or to any worker, into one request for the whole sweep (the stop file
of :mod:`brisk.run.signals`): every running job finishes its step, writes ``last.pt`` and
returns; no new job starts; ``train`` then exits with 128 + the signal number. Running the same
command again continues every job. A second signal to the submitting process ends it at once.
Other launchers are left as they are: the basic one runs its jobs in this process, where
:class:`~brisk.run.signals.StopSignals` already does this, and a SLURM job gets its signals
from SLURM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from brisk.run.signals import (
    STOP_SIGNALS,
    SWEEP_PID_ENV,
    SWEEP_STOP_ENV,
    request_sweep_stop,
    signal_name,
)

log = logging.getLogger("brisk")

STOP_FILE = ".stop"
# launchers whose jobs run in worker processes of this one (hydra/launcher=parallel)
PARALLEL_LAUNCHERS = ("joblib", "brisk_parallel_launcher")


class SweepStop(Callback):
    """Make a stop signal a sweep-wide request while a parallel multirun runs."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._signalled = False  # this process was signalled once (a worker's request is not)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Name the stop file for the workers (they inherit the environment) and handle signals."""
        target = str(config.hydra.launcher.get("_target_", ""))
        if not any(name in target for name in PARALLEL_LAUNCHERS):
            return
        path = Path(str(config.hydra.sweep.dir)).resolve() / STOP_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # the request of an earlier, stopped run of this sweep
        os.environ[SWEEP_STOP_ENV] = str(path)
        os.environ[SWEEP_PID_ENV] = str(os.getpid())
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Put the handlers back (a stopped sweep ends before this, by the exit in ``train``)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._signalled:
            log.warning("%s again: exiting now; running jobs are killed", signal_name(signum))
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._signalled = True
        request_sweep_stop(signum)
        log.warning(
            "%s received: the running jobs finish their current step and save last.pt, no new job "
            "starts (send it again to exit at once)",
            signal_name(signum),
        )
