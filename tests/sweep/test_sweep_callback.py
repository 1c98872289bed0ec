"""SweepSummary through Hydra's own multirun machinery: a tiny app, and the real `train` command."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

APP = textwrap.dedent(
    """
    import csv, json
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig


    @hydra.main(version_base="1.3", config_path=".", config_name="app")
    def main(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        if cfg.lr < 0:
            status = {"status": "failed", "best_val_acc1": None, "test_acc1": None,
                      "error": "ValueError: negative learning rate", "traceback": "Traceback ..."}
            (out / "status.json").write_text(json.dumps(status))
            raise ValueError("negative learning rate")
        acc = [min(1.0, cfg.lr * (step + cfg.seed)) for step in (1, 2, 3)]
        with (out / "metrics.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "epoch", "split", "loss", "acc1", "lr", "seconds"])
            for step, a in zip((1, 2, 3), acc):
                w.writerow([step, 0, "train", 1.0 / step, "", cfg.lr, 0.1])
                w.writerow([step, 0, "val", 1.0, a, "", 0.1])
        status = {"status": "ok", "best_val_acc1": max(acc), "test_acc1": acc[-1], "error": None}
        (out / "status.json").write_text(json.dumps(status))
        return acc[-1]


    main()
    """
)

APP_YAML = textwrap.dedent(
    """
    lr: 0.1
    seed: 0
    hydra:
      callbacks:
        sweep_summary:
          _target_: brisk.sweep.callback.SweepSummary
    """
)


def run_app(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(APP_YAML)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), "-m", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )


def grouped(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary_grouped.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_summary_written_at_multirun_end(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # refresh_each_job=false: only on_multirun_end can have written the files
    done = run_app(
        tmp_path,
        "lr=0.1,0.2",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        "++hydra.callbacks.sweep_summary.refresh_each_job=false",
        "++hydra.callbacks.sweep_summary.target_acc=0.25",
    )
    assert done.returncode == 0, done.stderr
    assert f"sweep summary: {sweep / 'summary.md'}" in done.stdout + done.stderr  # on_multirun_end
    rows = grouped(sweep)
    assert [r["config"] for r in rows] == ["lr=0.1", "lr=0.2"]
    assert [r["n_ok"] for r in rows] == ["2", "2"]
    # lr=0.1: final acc 0.3 (seed 0) and 0.4 (seed 1)
    assert float(rows[0]["final_val_acc_mean"]) == pytest.approx(0.35)
    # target 0.25: lr=0.1 reaches it at step 3 (seed 0: 0.3) and step 2 (seed 1: 0.3)
    assert float(rows[0]["target_acc"]) == 0.25
    assert float(rows[0]["steps_to_target_mean"]) == pytest.approx(2.5)
    for name in ("summary.csv", "summary.md", "summary_curves.png"):
        assert (sweep / name).is_file(), name


def test_failed_job_still_gets_a_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_app(tmp_path, "lr=0.1,-1", f"hydra.sweep.dir={sweep}")
    # Hydra re-raises the failure after both jobs ran, so on_multirun_end is skipped: the
    # per-job refresh is what leaves a summary behind
    assert done.returncode != 0
    assert "negative learning rate" in done.stderr
    assert "sweep summary:" not in done.stdout + done.stderr  # on_multirun_end never came
    text = (sweep / "summary.md").read_text()
    assert "2 jobs: 1 failed, 1 ok." in text
    assert "| 1 | `lr=-1` | failed | ValueError: negative learning rate |" in text
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["traceback"] == "Traceback ..."


def test_single_run_writes_no_summary(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(APP_YAML)
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "app.py"),
            f"hydra.run.dir={run_dir}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "status.json").is_file()
    assert not (tmp_path / "sweep").exists() and not (run_dir / "summary.md").exists()


@pytest.mark.slow
def test_train_multirun_summarises_real_runs(tmp_path: Path) -> None:
    """Two real digits runs, one made to fail by a negative learning rate."""
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brisk.train",
            "-m",
            "debug=fast",
            "optimizer.lr=0.05,-1",
            f"hydra.sweep.dir={sweep}",
            f"paths.output_dir={tmp_path / 'outputs'}",
            "++hydra.callbacks.sweep_summary._target_=brisk.sweep.callback.SweepSummary",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode != 0  # one job failed
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert 0.0 <= float(rows[0]["final_val_acc"]) <= 1.0
    assert float(rows[0]["final_train_loss"]) > 0
    assert "optimizer.lr" in rows[1]["error"]  # refused by the config validation, naming the key
    text = (sweep / "summary.md").read_text()
    assert "| `optimizer.lr=0.05` | 1/1 |" in text
    failed_row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert (
        "optimizer.lr=-1" in failed_row
        and "| failed | ConfigValueError: invalid config value: optimizer.lr=-1.0" in failed_row
    )
    assert (sweep / "summary_curves.png").read_bytes()[:4] == b"\x89PNG"
