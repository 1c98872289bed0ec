"""The launcher of ``hydra/launcher=parallel``: joblib's, with one worker process per job, so that
a job whose process dies takes only itself down.

hydra-joblib-launcher runs a sweep's jobs in one pool of loky worker processes. When a worker dies
(``kill -9``, the out-of-memory killer), loky declares the whole pool broken and kills the other
workers: the running jobs are lost in the middle of their steps, their ``status.json`` stays
``running``, and the sweep ends with no summary. Here each job runs in a loky executor of its own
(the same pickling and the same worker start as joblib), at most ``n_jobs`` at a time. When a job's
process dies:

- the job is recorded in its ``status.json`` as ``failed``, killed by the signal (``SIGKILL``),
  written under its run directory's lock; its ``last.pt`` stays, and the same command continues it;
- the other jobs run on, and the jobs not started yet start as usual;
- the sweep's summary is written once more at the end (``summary.md`` lists the job as failed);
- Hydra reports the failed job last, in one line, and the sweep exits with status 1 (2 when the
  first failed job stopped on a user error, as a sweep run in one process does).

A stopped sweep (``brisk.sweep.stop``) starts no new process. A process per job costs its imports
(a few seconds) per job rather than per worker.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from omegaconf import open_dict

from brisk.run.failures import FailedJob, note_job_failure
from brisk.run.records import RunRecord, read_status
from brisk.run.run_dir import RunDirectoryBusy, RunLock, RunPaths
from brisk.run.signals import signal_name, sweep_stop_signal

log = logging.getLogger("brisk")

# HydraConfig is one per process: finding a dead job's directory sets it for a moment
_hydra_config_lock = threading.Lock()


class JobKilled(CompactHydraException):
    """A job whose process died; Hydra prints this message (no traceback) when it reports it."""


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[Any]:
    """Run the jobs, ``n_jobs`` at a time, each in its own process; their ``JobReturn``s in order.

    ``launcher`` is a ``JoblibLauncher`` set up by Hydra (its ``joblib`` dict holds ``n_jobs``).
    """
    from hydra_plugins.hydra_joblib_launcher._core import execute_job
    from joblib.externals.loky.process_executor import (
        ProcessPoolExecutor,
        TerminatedWorkerError,
    )

    from brisk.sweep.callback import summarize_sweep

    setup_globals()
    config = launcher.config
    assert config is not None and launcher.hydra_context is not None
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = parallel_jobs(launcher.joblib.get("n_jobs"), len(job_overrides))
    log.info(
        "Launching %d jobs, %d at a time, each in its own process; sweep output dir: %s",
        len(job_overrides),
        n_jobs,
        sweep_dir,
    )
    for i, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
    singleton_state = Singleton.get_state()

    def run_one(i: int) -> JobReturn:
        idx, overrides = initial_job_idx + i, list(job_overrides[i])
        stopped_by = sweep_stop_signal()
        if stopped_by is not None:  # a stopped sweep: this job waits for the next run
            log.info("#%d not started: the sweep was stopped by %s", idx, signal_name(stopped_by))
            return _returned(overrides, math.nan)
        executor = ProcessPoolExecutor(max_workers=1)
        try:
            future = executor.submit(
                execute_job,
                idx,
                overrides,
                launcher.hydra_context,
                config,
                launcher.task_function,
                singleton_state,
            )
            result: JobReturn = future.result()
            return result
        except TerminatedWorkerError as exc:
            return _job_died(launcher, idx, overrides, _signal_of(exc))
        finally:
            executor.shutdown(wait=True)

    with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="brisk-job") as threads:
        returns = list(threads.map(run_one, range(len(job_overrides))))
    summarize_sweep(config)  # a dead job's status is in no summary its siblings wrote
    first = next((r for r in returns if r.status == JobStatus.FAILED), None)
    if first is not None:  # Hydra re-raises this one: a user error there makes the exit status 2
        note_job_failure(isinstance(first._return_value, FailedJob))
    return returns


def parallel_jobs(n_jobs: object, total: int) -> int:
    """joblib's ``n_jobs``: a count, or -1 (-2, ...) for every core (all but one, ...)."""
    n = -1 if n_jobs is None else int(str(n_jobs))
    if n < 0:
        n = max(1, (os.cpu_count() or 1) + 1 + n)
    return max(1, min(n, total))


def _signal_of(exc: BaseException) -> int | None:
    """The signal that ended the worker, from loky's message (``{SIGKILL(-9)}``)."""
    found = re.search(r"\((-\d+)\)", str(exc))
    return -int(found.group(1)) if found else None


def _returned(overrides: list[str], value: object) -> JobReturn:
    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret


def _job_died(launcher: Any, idx: int, overrides: list[str], signum: int | None) -> JobReturn:
    """Record a job whose process died as failed (killed), and return it as a failed job."""
    how = "killed" if signum is None else f"killed by {signal_name(signum)}"
    stopped_by = sweep_stop_signal()
    job_dir = _job_dir(launcher, idx, overrides)
    started = (job_dir / "status.json").is_file()
    if not started and stopped_by is not None:  # died to the stop signal before its job began
        return _returned(overrides, math.nan)
    message = f"the job's process was {how} (a `kill -9`, or the out-of-memory killer)"
    if started:
        _record_killed(job_dir, signal_name(signum) if signum is not None else "unknown", message)
    log.error("#%d (%s): %s", idx, " ".join(filter_overrides(overrides)), message)
    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED, working_dir=str(job_dir))
    last = RunPaths(job_dir).last
    continues = f"; {last} is kept and the same command continues it" if last.is_file() else ""
    ret.return_value = JobKilled(
        f"brisk: job #{idx} ({' '.join(filter_overrides(overrides))}) failed: its process was "
        f"{how}; recorded in {job_dir / 'status.json'}{continues}"
    )
    return ret


def _record_killed(job_dir: Path, signal_text: str, message: str) -> None:
    """status.json says failed (killed), written holding the run directory's lock; a job that
    had finished keeps its record, with this attempt under ``last_attempt``."""
    lock = RunLock(RunPaths(job_dir))
    try:
        lock.acquire()
    except RunDirectoryBusy as busy:  # another live process runs there: its record is its own
        log.warning("not recording the dead job: %s", busy)
        return
    try:
        if read_status(job_dir / "status.json").get("status") in ("ok", "running"):
            RunRecord(job_dir).killed(signal_text, message)
    finally:
        lock.release()


def _job_dir(launcher: Any, idx: int, overrides: list[str]) -> Path:
    """The directory Hydra gave job ``idx`` (``hydra.sweep.dir/hydra.sweep.subdir``)."""
    loader = launcher.hydra_context.config_loader
    with _hydra_config_lock:
        saved = HydraConfig.instance().cfg
        try:
            cfg = loader.load_sweep_config(launcher.config, overrides)
            with open_dict(cfg):
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
                cfg.hydra.job.num = idx
            HydraConfig.instance().set_config(cfg)
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        finally:
            HydraConfig.instance().cfg = saved
