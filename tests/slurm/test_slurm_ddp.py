"""Two tasks of one SLURM allocation train as one data-parallel run, without torchrun: brisk reads
the ranks from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the rendezvous from
``SLURM_JOB_NODELIST``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.distributed.test_torchrun import COMMON, WEIGHT_TOLERANCE, max_abs_diff, rows, weights
from tests.slurm.conftest import finish, job_env, sbatch, start_train

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def test_sbatch_with_two_tasks_trains_the_weights_of_one_process(
    slurm_cluster: None, tmp_path: Path
) -> None:
    two = tmp_path / "two"
    # the documented pattern: `srun train ...` in a batch script of --ntasks=2, one run directory
    script = tmp_path / "job.sh"
    overrides = " ".join((*COMMON, "trainer.threads=1", f"hydra.run.dir={two}"))
    script.write_text(f"#!/bin/bash\nsrun {sys.executable} -m brisk.train {overrides}\n")
    # the 1-process reference runs here while the job waits for its turn and starts
    reference = start_train(*COMMON, "trainer.threads=1", f"hydra.run.dir={tmp_path / 'one'}")
    job_id, state = sbatch(
        "--ntasks=2",
        "--cpus-per-task=1",
        "--time=5",
        f"--output={tmp_path / 'slurm-%j.out'}",
        str(script),
        env={**job_env(), "BRISK_DIST_TIMEOUT_S": "60"},
    )
    job_output = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert state == "COMPLETED", job_output
    status = json.loads((two / "status.json").read_text())
    assert status["status"] == "ok" and status["slurm_job_id"] == job_id
    # two ranks of one process group: rank 1 logs to its own file and writes no metrics
    assert "run directory" in (two / "train_rank1.log").read_text()
    steps = [r["step"] for r in rows(two) if r["split"] == "train"]
    assert steps == [str(s) for s in range(1, 11)]

    finish(reference)
    diff = max_abs_diff(
        weights(two / "checkpoints" / "last.pt"),
        weights(tmp_path / "one" / "checkpoints" / "last.pt"),
    )
    print(f"srun, 2 tasks: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= WEIGHT_TOLERANCE
    one = {(r["split"], r["step"]): r for r in rows(tmp_path / "one")}
    reduced = {(r["split"], r["step"]): r for r in rows(two)}
    assert one.keys() == reduced.keys()
    for key, row in one.items():
        assert float(reduced[key]["acc1"]) == pytest.approx(float(row["acc1"]), abs=1e-6), key
