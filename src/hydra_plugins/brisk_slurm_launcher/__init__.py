"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, with brisk's requeue.

Hydra loads launchers only from the ``hydra_plugins`` package and imports every module in it at
start-up, so this one defines nothing when the ``slurm`` extra is not installed.
"""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError:  # the slurm extra is not installed
    _SubmititSlurmLauncher = None

if _SubmititSlurmLauncher is not None:

    class BriskSlurmLauncher(_SubmititSlurmLauncher):
        """Each job saves at the current step on SIGUSR2/SIGTERM and is requeued (brisk.sweep.slurm)."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from brisk.sweep.slurm import run_requeueable

            return run_requeueable(
                lambda: super(BriskSlurmLauncher, self).__call__(*args, **kwargs)
            )
