"""``train -m hydra/launcher=slurm``: a sweep becomes one job array on a real SLURM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from tests.slurm.conftest import slurm_train, submitted_arrays

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def test_sweep_runs_as_a_job_array_and_reports_a_failing_job(
    slurm_cluster: None, tmp_path: Path
) -> None:
    # batch 100000 is larger than the training set: those jobs fail inside train()
    proc = slurm_train(
        "seed=0,1",
        "trainer.batch_size=32,100000",
        "debug=fast",
        f"hydra.sweep.dir={tmp_path}",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output  # the failure is re-raised once every job ran
    assert "batch_size" in output
    # one sbatch call: an array of the 4 jobs
    assert [a.split("%")[0] for a in submitted_arrays(tmp_path)] == ["0-3"], output
    jobs = {}
    for i in range(4):
        overrides = yaml.safe_load((tmp_path / str(i) / ".hydra" / "overrides.yaml").read_text())
        status = json.loads((tmp_path / str(i) / "status.json").read_text())
        jobs[i] = ("trainer.batch_size=100000" in overrides, status)
    ok = [s for failing, s in jobs.values() if not failing]
    failed = [s for failing, s in jobs.values() if failing]
    assert [s["status"] for s in ok] == ["ok", "ok"], output
    assert all(s["test_acc1"] is not None for s in ok)
    assert [s["status"] for s in failed] == ["failed", "failed"]
    assert all("batch_size" in s["error"] for s in failed)
    # every job ran under SLURM, each as its own job of the array
    ids = [s["slurm_job_id"] for _, s in jobs.values()]
    assert all(ids) and len(set(ids)) == 4, ids
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["failed", "failed", "ok", "ok"]
    for name in ("summary_grouped.csv", "summary.md", "summary_curves.png"):
        assert (tmp_path / name).is_file(), name
