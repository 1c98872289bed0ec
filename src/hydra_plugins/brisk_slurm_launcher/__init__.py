"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, with brisk's requeue.

Hydra loads launchers only from the ``hydra_plugins`` package and imports every module in it at
start-up, so this one defines nothing when the ``slurm`` extra is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (  # type: ignore[import-untyped]
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError:  # the slurm extra is not installed
    _SubmititSlurmLauncher = None

if _SubmititSlurmLauncher is not None:

    class BriskSlurmLauncher(_SubmititSlurmLauncher):
        """Each job saves at the current step on SIGUSR2/SIGTERM and is requeued
        (brisk.sweep.slurm)."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            """Run the launcher's job wrapper under :func:`run_requeueable`, so a signalled job
            checkpoints and requeues itself instead of dying.
            """
            from brisk.sweep.slurm import run_requeueable

            return run_requeueable(
                lambda: super(BriskSlurmLauncher, self).__call__(*args, **kwargs)
            )

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            """Submit, wait, then summarise the sweep once more from the submitting side; a
            submission refused for a reason the config can fix is one line (brisk.sweep.slurm).

            Jobs of an array that end together each rewrite the summary from their node; the one
            written last may predate another's final status. After the batch, all statuses are
            final.
            """
            from brisk.run.failures import fail_sweep
            from brisk.sweep.callback import summarize_sweep
            from brisk.sweep.slurm import submission_problem

            try:
                returns = super().launch(job_overrides, initial_job_idx)
            except Exception as exc:
                problem = submission_problem(exc)
                if problem is None:
                    raise
                fail_sweep(problem)  # one line naming the key to set, exit status 2
            if self.config is not None:
                summarize_sweep(self.config)
            return returns
