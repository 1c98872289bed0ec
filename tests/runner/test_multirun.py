"""``train -m``: one directory per job, failures isolated and reported, a summary of the sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tests.conftest import run_train


@pytest.mark.slow
def test_sweep_with_a_failing_job_goes_on_and_is_summarised(tmp_path: Path) -> None:
    # batch 100000 is larger than the training set: that job fails inside train(), the other
    # succeeds
    proc = run_train(
        "-m",
        "debug=fast",
        "trainer.batch_size=32,100000",
        f"hydra.sweep.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0  # Hydra re-raises the first failure after running every job
    ok, failed = (json.loads((tmp_path / str(i) / "status.json").read_text()) for i in (0, 1))
    assert ok["status"] == "ok" and ok["test_acc1"] is not None
    assert (
        failed["status"] == "failed"
        and "batch_size" in failed["error"]
        and "Traceback" in failed["traceback"]
    )
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and sorted(r["status"] for r in rows) == ["failed", "ok"]
    assert (tmp_path / "summary.md").is_file()
