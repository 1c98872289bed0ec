"""``resume=auto`` from the command line: the continued run's log goes into its own train.log."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_train

FAST = ("debug=fast", "trainer.limit_train_batches=3", "trainer.threads=1")


def test_resume_auto_leaves_no_stray_folder_and_logs_into_the_runs_train_log(
    tmp_path: Path,
) -> None:
    outputs = tmp_path / "outputs"
    run_train(*FAST, f"paths.output_dir={outputs}")
    (run,) = (outputs / "runs").iterdir()
    before = (run / "train.log").read_text()
    run_train(*FAST, f"paths.output_dir={outputs}", "resume=auto")
    assert list((outputs / "runs").iterdir()) == [run]  # no dated folder for the second attempt
    log = (run / "train.log").read_text()
    assert log.startswith(before)  # the first attempt's lines are kept, the second's follow
    added = log[len(before) :]
    assert f"resume=auto: continuing {outputs / 'runs' / run.name}" in added
    assert "resumed from" in added and "nothing left to do" in added
