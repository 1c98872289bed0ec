"""The SLURM launcher of ``hydra/launcher=slurm``: submitit's, plus a requeue that loses no step.

The launcher class lives in ``hydra_plugins.brisk_slurm_launcher`` (Hydra accepts launchers from the
``hydra_plugins`` package only); what its jobs do on the node is here.

hydra-submitit-launcher runs each sweep job as a SLURM job. Left alone, submitit answers SIGUSR2
(``--signal=USR2@signal_delay_s`` before the time limit, or a preemption) by requeueing the job and
exiting from inside the signal handler, in the middle of a training step: the requeued job resumes
from the last periodic checkpoint and redoes the steps after it. SIGTERM it ignores.

This launcher hands both signals to brisk instead. While ``train`` runs, SIGUSR2 goes to the same
handler as SIGTERM and SIGUSR1 (``brisk.run.signals``): the loop finishes its step, writes
``last.pt`` at that step, marks the run ``interrupted`` and exits with 128 + the signal number.
The launcher then requeues the job with ``scontrol requeue``. The requeued job runs the same sweep
job in the same run directory, and ``train`` continues from that directory's ``last.pt``. Outside
``train`` (while Hydra composes the config) submitit's own handler still answers SIGUSR2.

When the requeue fails (the job was cancelled, say), the job ends with an error that the sweep
reports, rather than with no result at all: submitit waits for a result file that an exit without
one never writes.

A submission that ``sbatch`` refuses for a reason the config can fix (:func:`submission_problem`)
ends the sweep with one line naming the key to set, and exit status 2.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from brisk.errors import UserError

log = logging.getLogger("brisk")

# sbatch's answer, on a cluster without GPUs, to the launcher's default --gpus-per-node=1
GRES_REFUSED = "Invalid generic resource (gres) specification"

# Exit codes of a run that saved its state after a scheduler's signal: requeue those.
REQUEUE_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_EXIT_CODES = frozenset(128 + int(s) for s in REQUEUE_SIGNALS)


def run_requeueable(job: Callable[[], Any]) -> Any:
    """Run one sweep job on a SLURM node; requeue it when brisk stopped it after a signal."""
    if threading.current_thread() is not threading.main_thread():
        return job()
    submitit_handler = signal.getsignal(signal.SIGUSR2)

    def forward(signum: int, frame: FrameType | None) -> None:
        stop = signal.getsignal(signal.SIGTERM)
        # brisk's stop handler is a bound method of the object the training loop polls
        if callable(stop) and hasattr(getattr(stop, "__self__", None), "request"):
            stop(signum, frame)
        elif callable(submitit_handler):
            submitit_handler(signum, frame)

    signal.signal(signal.SIGUSR2, forward)
    try:
        return job()
    except SystemExit as exit_:
        if exit_.code not in REQUEUE_EXIT_CODES or "SLURM_JOB_ID" not in os.environ:
            raise
        problem = requeue(job_address(os.environ))
        if problem is None:
            raise
        raise RuntimeError(
            f"the run stopped after a signal (exit {exit_.code}) and was not requeued: {problem}"
        ) from None
    finally:
        signal.signal(signal.SIGUSR2, submitit_handler)


def job_address(environ: Mapping[str, str]) -> str:
    """How scontrol names this job: ``ARRAY_TASK`` for a task of an array, else the job id.

    The first task of an array has the array's own id as ``SLURM_JOB_ID``, and ``scontrol requeue``
    (or ``scancel``) with that id acts on every task of the array.
    """
    if "SLURM_ARRAY_JOB_ID" in environ and "SLURM_ARRAY_TASK_ID" in environ:
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def requeue(job_id: str) -> str | None:
    """``scontrol requeue JOB``; returns why it failed, or None once SLURM took it."""
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scontrol requeue {job_id}: {exc}"
    if proc.returncode != 0:
        return f"scontrol requeue {job_id}: {(proc.stderr or proc.stdout).strip()}"
    log.warning("requeued SLURM job %s: it continues from last.pt when it starts again", job_id)
    for handler in logging.getLogger().handlers:
        handler.flush()
    return None


def submission_problem(exc: BaseException) -> UserError | None:
    """What to change when ``sbatch`` refused the sweep's jobs for a reason the config can fix,
    or None. submitit raises its ``FailedJobError`` with sbatch's stderr as the message.
    """
    text = str(exc)
    if GRES_REFUSED in text:
        return UserError(
            f"sbatch refused the jobs: '{GRES_REFUSED}': this cluster (or partition "
            "hydra.launcher.partition) has no GPUs as the launcher asks for "
            "(hydra.launcher.gpus_per_node=1); for CPU jobs set hydra.launcher.gpus_per_node=null"
        )
    return None
