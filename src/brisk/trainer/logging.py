"""Where a run's numbers go: metrics.csv, TensorBoard, status.json and the text log.

Only rank 0 writes; other ranks get a :class:`RunLogger` whose writers are disabled.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("brisk")

BASE_COLUMNS = ["step", "epoch", "split", "loss", "acc1", "lr", "seconds"]


class MetricsCSV:
    """One row per logged train step and per evaluation.

    New metric names (per-layer whitening statistics, say) may appear mid-run; the file is then rewritten
    with the wider header, so it always stays a rectangular CSV that pandas or a spreadsheet reads.
    A resumed run appends to the rows it had written before, dropping rows past the resumed step.
    """

    def __init__(self, path: Path, resume_from_step: int | None = None) -> None:
        self.path, self.columns, self.rows = path, list(BASE_COLUMNS), []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or BASE_COLUMNS)
                self.rows = list(reader)
            if (
                resume_from_step is not None
            ):  # rows past the checkpoint belong to the lost part of the run
                self.rows = [r for r in self.rows if int(float(r["step"])) <= resume_from_step]
                self._rewrite()

    def write(self, row: dict[str, Any]) -> None:
        row = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new or not self.path.is_file():
            self.columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return value


class RunLogger:
    """Fans metrics out to the CSV, TensorBoard and the text log."""

    def __init__(self, run_dir: Path, enabled: bool, resume_from_step: int | None = None) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.csv = MetricsCSV(run_dir / "metrics.csv", resume_from_step) if enabled else None
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"), purge_step=resume_from_step
            )

    def metrics(self, split: str, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.csv.write({"step": step, "epoch": epoch, "split": split, **values})
        for key, value in values.items():
            if isinstance(value, int | float) and key not in ("seconds",):
                self.tb.add_scalar(key if "/" in key else f"{split}/{key}", value, step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        if self.enabled:
            self.tb.add_figure(tag, figure, step)

    def text(self, tag: str, text: str) -> None:
        if self.enabled:
            self.tb.add_text(tag, text)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_status(run_dir: Path, **fields: Any) -> None:
    """status.json: {"status": "ok"|"failed"|"running", "best_val_acc1", "test_acc1", "error", ...}."""
    path = run_dir / "status.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    if fields.get("status") == "running":
        # a (re)start: an elastic restart or a resume must not carry the error of the attempt before
        current = {}
    current.update(fields)
    current.setdefault("best_val_acc1", None)
    current.setdefault("test_acc1", None)
    current.setdefault("error", None)
    tmp = path.with_name(".tmp-status.json")
    tmp.write_text(json.dumps(current, indent=2, default=str) + "\n")
    os.replace(tmp, path)
