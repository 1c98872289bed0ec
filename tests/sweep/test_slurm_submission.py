"""``hydra/launcher=slurm`` on a cluster that refuses the submission: what to set, in one line.

The real SLURM tests (tests/slurm) need a cluster; here ``sbatch`` is a stand-in that answers as
sbatch does on a cluster without GPUs, and everything else (Hydra, submitit, the launcher) is real.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.conftest import run_train


def test_a_gpu_request_on_a_cluster_without_gpus_says_to_set_gpus_per_node_null(
    tmp_path: Path,
) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\n"
        'echo "sbatch: error: Invalid generic resource (gres) specification" >&2\n'
        "exit 1\n"
    )
    srun = bin_dir / "srun"  # submitit checks that it exists
    srun.write_text("#!/bin/sh\nexit 0\n")
    for tool in (sbatch, srun):
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    proc = run_train(
        "-m",
        "hydra/launcher=slurm",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HYDRA_FULL_ERROR": "0"},
        check=False,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "hydra.launcher.gpus_per_node=null" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_other_submission_failures_are_left_as_they_are() -> None:
    from brisk.sweep.slurm import submission_problem

    assert submission_problem(RuntimeError("sbatch: error: invalid partition specified")) is None
    problem = submission_problem(
        RuntimeError("sbatch: error: Invalid generic resource (gres) specification")
    )
    assert problem is not None and "gpus_per_node=null" in str(problem)
