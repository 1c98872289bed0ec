"""Where a run's numbers go: metrics.csv, TensorBoard, status.json and the text log, and the
external loggers of the ``logger`` group (``brisk.run.loggers``).

Only rank 0 writes; other ranks get a :class:`RunLogger` whose writers are disabled.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

from brisk.run.checkpoint import StorageError, atomic_write, free_space
from brisk.run.distributed import broadcast_object
from brisk.run.loggers import RunLoggers, tb_tag
from brisk.runtime import is_distributed

log = logging.getLogger("brisk")

BASE_COLUMNS = ["step", "epoch", "split", "loss", "acc1", "lr", "seconds"]


class MetricsCSV:
    """One row per logged train step and per evaluation.

    New metric names (per-layer whitening statistics, say) may appear mid-run; the file is then
    rewritten with the wider header, so it always stays a rectangular CSV that pandas or a
    spreadsheet reads. A resumed run appends to the rows it had written before, dropping rows past
    the resumed step.
    """

    def __init__(self, path: Path, resume_from_step: int | None = None) -> None:
        self.path, self.columns, self.rows = path, list(BASE_COLUMNS), []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or BASE_COLUMNS)
                self.rows = list(reader)
            if resume_from_step is not None:
                # rows past the checkpoint belong to the lost part of the run, and the test row
                # is written again when the resumed run ends
                self.rows = [
                    r
                    for r in self.rows
                    if int(float(r["step"])) <= resume_from_step and r.get("split") != "test"
                ]
                self._rewrite()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; a new column rewrites the file with the wider header."""
        row = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new or not self.path.is_file():
            self.columns += new
            self._rewrite()
        else:
            try:
                with self.path.open("a", newline="") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
            except OSError as exc:
                raise StorageError(
                    f"could not append to {self.path}: {exc.strerror or exc}; "
                    f"{free_space(self.path)} free there"
                ) from exc

    def _rewrite(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return value


class RunLogger:
    """Fans metrics out to the CSV, TensorBoard (unless ``logger`` left it out) and the external
    loggers."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        resume_from_step: int | None = None,
        loggers: RunLoggers | None = None,
    ) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.loggers = loggers if loggers is not None else RunLoggers()
        self.csv = MetricsCSV(run_dir / "metrics.csv", resume_from_step) if enabled else None
        self.tb = None
        if enabled and self.loggers.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"), purge_step=resume_from_step
            )

    def metrics(self, split: str, step: int, epoch: int, values: dict[str, float]) -> None:
        """One row of ``metrics.csv``, its TensorBoard scalars and the same scalars to the external
        loggers (the wall-clock ``seconds`` only in the CSV).
        """
        if not self.enabled:
            return
        assert self.csv is not None  # built when enabled
        self.csv.write({"step": step, "epoch": epoch, "split": split, **values})
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and key not in ("seconds",):
                    self.tb.add_scalar(tb_tag(split, key), value, step)
        self.loggers.log(split, step, values)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A TensorBoard figure (the test confusion matrix); nothing when logging is off."""
        if self.tb is not None:
            self.tb.add_figure(tag, figure, step)

    def text(self, tag: str, text: str) -> None:
        """A TensorBoard text entry; nothing when logging is off, so callers need no check."""
        if self.tb is not None:
            self.tb.add_text(tag, text)

    def hparams(self, config: dict[str, Any], metrics: dict[str, float | None]) -> None:
        """The run's TensorBoard HParams record (its config and final figures), in the same event
        file as its scalars; nothing when logging or TensorBoard (``logger``) is off."""
        if self.enabled and self.tb is not None:
            from brisk.run.hparams import log_hparams

            log_hparams(self.tb, config, metrics)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV is written row by row)."""
        if self.tb is not None:
            self.tb.close()


def read_status(path: Path) -> dict[str, Any]:
    """status.json as a dict; an unreadable one is logged and set aside as ``.corrupt``."""
    if not path.is_file():
        return {}
    try:
        current = json.loads(path.read_text())
        if isinstance(current, dict):
            return current
        problem = f"holds a {type(current).__name__}, not an object"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"is not valid JSON ({exc})"
    backup = path.with_name(path.name + ".corrupt")
    try:
        path.replace(backup)
    except OSError:
        backup = path
    log.warning("%s %s: replacing it (the old file is kept as %s)", path, problem, backup.name)
    return {}


def score_keys(monitor: str) -> tuple[str, str]:
    """status.json's keys for the best validation and the test figure of ``task.monitor``:
    ``best_val_acc1``/``test_acc1`` for image tasks, ``best_val_video_acc1``/``test_video_acc1``
    for video tasks, whose figure is per video, not per clip."""
    return f"best_val_{monitor}", f"test_{monitor}"


def write_status(run_dir: Path, **fields: Any) -> None:
    """status.json: {"status": "ok"|"failed"|"running"|"interrupted", "monitor",
    "best_val_<monitor>", "test_<monitor>" (:func:`score_keys`), "error", ...}; fields are merged
    into what is there, and "running" starts a fresh record."""
    path = run_dir / "status.json"
    current = read_status(path)
    if fields.get("status") == "running":
        # a (re)start: an elastic restart or a resume must not carry the error of the attempt before
        current = {}
    current.update(fields)
    _dump_status(path, current)


def _dump_status(path: Path, record: dict[str, Any]) -> None:
    monitor = str(record.get("monitor", "acc1"))
    if monitor != "acc1":  # the placeholders of a record begun before the monitor was known
        for key in score_keys("acc1"):
            if key in record and record[key] is None:
                del record[key]
    for key in score_keys(monitor):
        record.setdefault(key, None)
    record.setdefault("error", None)
    text = json.dumps(record, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


class RunRecord:
    """The status.json of one run directory across attempts, written by rank 0 only.

    A run that finished (status ok) keeps that record, with its test accuracy, whatever a later
    attempt in the same directory does: a later attempt that fails or is interrupted is noted under
    ``last_attempt`` instead. Only a later attempt that finishes replaces it.
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path, self.enabled = run_dir / "status.json", enabled
        self.finished: dict[str, Any] | None = None
        self._begun = False

    def begin(self, **fields: Any) -> None:
        """Start an attempt; every rank learns whether the run had finished before
        (``finished``)."""
        self._begun = True
        if self.enabled:
            previous = read_status(self.path)
            if previous.get("status") == "ok":
                self.finished = dict(previous)
                previous["last_attempt"] = {"status": "running", "started": _now()}
                _dump_status(self.path, previous)
            else:
                _dump_status(self.path, {"status": "running", **fields})
        if is_distributed():
            self.finished = broadcast_object(self.finished)  # type: ignore[assignment]

    def update(self, **fields: Any) -> None:
        """Add facts about the run (its cost, say) without changing its status."""
        if self.enabled:
            record = read_status(self.path)
            record.update(fields)
            _dump_status(self.path, record)

    def ok(self, **fields: Any) -> None:
        """The run finished: any record of an earlier failed or interrupted attempt is dropped."""
        if self.enabled:
            record = read_status(self.path)
            for stale in ("last_attempt", "traceback", "signal", "step"):
                record.pop(stale, None)
            record.update(status="ok", error=None, **fields)
            _dump_status(self.path, record)

    def failed(self, exc: BaseException) -> None:
        """The attempt failed (before :meth:`begin` too: a refused config); the traceback is kept.

        Best effort: on a full disk this write may fail too; the original error matters more.
        """
        self._end("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())

    def interrupted(self, signal: str, step: int, message: str) -> None:
        """A stop signal ended the attempt at ``step``; ``resume=auto`` continues it from there."""
        self._end("interrupted", signal=signal, step=step, error=message)

    def killed(self, signal: str, message: str) -> None:
        """The attempt's process died (SIGKILL, the OOM killer) without a word: another process
        records it, holding the run directory's lock. ``last.pt`` holds its last saved step."""
        self._end("failed", signal=signal, error=message)

    def _end(self, status: str, **fields: Any) -> None:
        if not self.enabled:
            return
        try:
            if self.finished is None and not self._begun:
                previous = read_status(self.path)
                if previous.get("status") == "ok":
                    self.finished = previous
            if self.finished is not None:
                record = read_status(self.path) or dict(self.finished)
                record["last_attempt"] = {"status": status, "ended": _now(), **fields}
                record["status"] = "ok"
                _dump_status(self.path, record)
                log.warning(
                    "this attempt %s; %s keeps the finished run's record (status ok)",
                    status,
                    self.path,
                )
            else:
                write_status(self.path.parent, status=status, **fields)
        except (OSError, StorageError) as exc:
            log.error("could not record status %s in %s: %s", status, self.path, exc)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
