"""Builders for sweep directories shaped like the runner's multirun output."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

HEADER = ["step", "epoch", "split", "loss", "acc1", "lr", "seconds"]


def make_job(
    sweep: Path,
    num: int,
    overrides: Sequence[str],
    *,
    val: Sequence[tuple[int, float]] = (),
    train: Sequence[tuple[int, float]] = (),
    test: float | None = None,
    status: str | None = "ok",
    error: str | None = None,
    extra_columns: dict[str, float] | None = None,
    config: dict | None = None,
    seconds: dict[int, float] | None = None,
) -> Path:
    """One job folder; ``status=None`` writes no status.json, empty curves write no metrics.csv.

    Every row's clock reads 1.5 s unless ``seconds`` maps train steps to the seconds column; then,
    as in the runner's metrics.csv, only train rows have one.
    """
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if config is not None:
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {"step": s, "epoch": 0, "split": "train", "loss": v, "acc1": "", "lr": 0.1}
        for s, v in train
    ]
    rows += [
        {"step": s, "epoch": 0, "split": "val", "loss": 1.0, "acc1": v, "lr": ""} for s, v in val
    ]
    if test is not None:
        last = max((s for s, _ in val), default=0)
        rows.append(
            {"step": last, "epoch": 0, "split": "test", "loss": 1.0, "acc1": test, "lr": ""}
        )
    if rows:
        rows.sort(key=lambda r: (r["step"], r["split"] != "train"))
        columns = HEADER + list(extra_columns or {})
        with (job / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for row in rows:
                clock = 1.5 if seconds is None else seconds.get(row["step"], "")
                if seconds is not None and row["split"] != "train":
                    clock = ""
                writer.writerow({**row, "seconds": clock, **(extra_columns or {})})
    if status is not None:
        best = max((v for _, v in val), default=None)
        (job / "status.json").write_text(
            json.dumps({"status": status, "best_val_acc1": best, "test_acc1": test, "error": error})
        )
    return job


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 10, in main\n'
    "    loss.backward()\n"
    "RuntimeError: loss is NaN at step 12\n"
)


def standard_sweep(root: Path) -> Path:
    """2 configurations x 2 seeds, one failed job and one job that left only .hydra/.

    Learning rate 0.1 (jobs 0, 1) converges faster and higher than 0.05 (jobs 2, 3); job 4
    (lr 0.5) failed after logging a few rows; job 5 (lr 0.5) crashed before writing anything.
    """
    sweep = root / "sweep"
    fast = ("debug=fast",)
    make_job(
        sweep,
        0,
        ["optimizer.lr=0.1", "seed=0", *fast],
        val=[(10, 0.5), (20, 0.8), (30, 0.9)],
        train=[(5, 2.0), (15, 1.0), (25, 0.5)],
        test=0.88,
        extra_columns={"whiten_ms": 3.0},
    )
    make_job(
        sweep,
        1,
        ["optimizer.lr=0.1", "seed=1", *fast],
        val=[(10, 0.6), (20, 0.85), (30, 0.92)],
        train=[(5, 1.8), (15, 0.9), (25, 0.4)],
        test=0.90,
        extra_columns={"whiten_ms": 3.0},
    )
    make_job(
        sweep,
        2,
        ["optimizer.lr=0.05", "seed=0", *fast],
        val=[(10, 0.3), (20, 0.6), (30, 0.7)],
        train=[(5, 2.2), (15, 1.5), (25, 1.0)],
        test=0.69,
    )
    make_job(
        sweep,
        3,
        ["optimizer.lr=0.05", "seed=1", *fast],
        val=[(10, 0.4), (20, 0.65), (30, 0.8)],
        train=[(5, 2.1), (15, 1.4), (25, 0.8)],
        test=0.79,
    )
    make_job(
        sweep,
        4,
        ["optimizer.lr=0.5", "seed=0", *fast],
        train=[(5, 2.3)],
        status="failed",
        error=TRACEBACK,
    )
    make_job(sweep, 5, ["optimizer.lr=0.5", "seed=1", *fast], status=None)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / ".submitit").mkdir()
    return sweep
