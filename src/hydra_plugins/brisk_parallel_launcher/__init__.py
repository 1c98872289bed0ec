"""``hydra/launcher=parallel``: hydra-joblib-launcher's settings, one process per job.

Hydra loads launchers only from the ``hydra_plugins`` package and imports every module in it at
start-up, so this one defines nothing when the ``joblib`` extra is not installed. What it does is
in ``brisk.sweep.parallel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import (  # type: ignore[import-untyped]
        JoblibLauncher as _JoblibLauncher,
    )
except ImportError:  # the joblib extra is not installed
    _JoblibLauncher = None

if _JoblibLauncher is not None:

    class BriskParallelLauncher(_JoblibLauncher):
        """Each job in a process of its own: a job whose process dies is recorded as failed and
        the others finish (brisk.sweep.parallel)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            """Run the jobs ``n_jobs`` at a time; a summary of the sweep at the end."""
            from brisk.sweep.parallel import launch

            return launch(self, job_overrides, initial_job_idx)
