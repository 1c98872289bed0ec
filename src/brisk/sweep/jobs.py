"""Read one job directory of a Hydra multirun into a :class:`JobRecord`.

A sweep directory is whatever the jobs managed to leave behind: a job that crashed while composing
its config has only ``.hydra/``, one killed mid-training has ``metrics.csv`` but no final
``status.json``, and files may be truncated. Every reader here therefore records what it could not
read in ``JobRecord.problems`` instead of raising, so one broken job never hides the others.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

DEFAULT_METRIC = "acc1"
MISSING_STATUS_ERROR = "no status.json: the job stopped before writing it, or is still running"


@dataclass
class Curve:
    """One metric against optimizer steps, in the order the job logged it.

    ``seconds`` holds the run's wall-clock seconds at each point (None where the job did not log a
    clock), parallel to ``steps``; empty when nobody filled it.
    """

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)

    def last(self) -> float | None:
        """The final value, the one a run ends with (None for an empty curve)."""
        return self.values[-1] if self.values else None

    def best(self) -> float | None:
        """The maximum, whatever step it came at (None for an empty curve)."""
        return max(self.values) if self.values else None

    def first_reaching(self, target: float) -> tuple[int, float | None] | None:
        """The step and seconds of the first point whose value is at least ``target``."""
        for i, (step, value) in enumerate(zip(self.steps, self.values)):
            if value >= target - 1e-12:
                return step, self.seconds[i] if i < len(self.seconds) else None
        return None

    def first_step_reaching(self, target: float) -> int | None:
        """The first logged step whose value is at least ``target`` (None if never reached)."""
        hit = self.first_reaching(target)
        return None if hit is None else hit[0]


@dataclass
class JobRecord:
    """Everything the summary needs from one job; ``None``: a number the job did not produce."""

    name: str
    path: Path
    overrides: list[str]
    status: str  # status.json's value (ok | failed | running), or "missing" / "unreadable"
    error: str | None
    traceback: str | None  # status.json's "traceback", when the runner recorded one
    seed: str | None
    monitor: str | None  # task.monitor from the job's config, when it names one
    val: Curve = field(default_factory=Curve)  # validation accuracy (the chosen metric)
    train_loss: Curve = field(default_factory=Curve)
    status_best_val: float | None = None
    run_seconds: float | None = None  # wall-clock seconds at the last logged step
    test_acc: float | None = None
    test_from_metrics: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the job finished; only finished jobs enter the means."""
        return self.status == "ok"

    @property
    def final_val_acc(self) -> float | None:
        """The last validation accuracy the job logged."""
        return self.val.last()

    @property
    def best_val_acc(self) -> float | None:
        """The curve's maximum; status.json's figure only when the job has no validation rows."""
        best = self.val.best()
        return best if best is not None else self.status_best_val

    @property
    def final_train_loss(self) -> float | None:
        """The last training loss the job logged."""
        return self.train_loss.last()

    @property
    def final_test_acc(self) -> float | None:
        """The test accuracy from status.json, or from metrics.csv when status.json has none."""
        return self.test_acc if self.test_acc is not None else self.test_from_metrics


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n-1) over the seeds that produced a value."""

    mean: float | None
    std: float | None  # None with fewer than two values
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        """Statistics of the values that are not None (seeds without a number are left out)."""
        present = [v for v in values if v is not None]
        if not present:
            return cls(None, None, 0)
        std = statistics.stdev(present) if len(present) > 1 else None
        return cls(statistics.fmean(present), std, len(present))


@dataclass
class ConfigGroup:
    """The jobs of one configuration (same overrides up to the seed and ignored keys)."""

    key: tuple[str, ...]
    label: str = ""
    jobs: list[JobRecord] = field(default_factory=list)

    @property
    def ok_jobs(self) -> list[JobRecord]:
        """The jobs that finished; the group's statistics are over these only."""
        return [j for j in self.jobs if j.ok]

    def stat(self, value: Callable[[JobRecord], float | None]) -> Stat:
        """:class:`Stat` of ``value`` over the finished jobs."""
        return Stat.of(value(j) for j in self.ok_jobs)


@dataclass(frozen=True)
class Target:
    """The accuracy whose first crossing is timed, and the baseline it came from."""

    value: float | None
    reason: str
    # the baseline configuration's mean run length, what the time to target is a fraction of
    reference_seconds: float | None = None
    reference_steps: float | None = None


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep, in job order (``0/, 1/, ..., 10/``, then any non-numeric names).

    A folder counts as a job when it has ``.hydra/``, ``metrics.csv`` or ``status.json``; hidden
    folders (``.submitit/`` from the SLURM launcher) never do.
    """
    markers = (".hydra", "metrics.csv", "status.json")
    jobs = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any((p / m).exists() for m in markers)
    ]
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


@functools.lru_cache(maxsize=4096)
def override_key(override: str) -> str:
    """The config key or group an override sets: ``+trainer.epochs=3`` -> ``trainer.epochs``."""
    try:
        return OverridesParser.create().parse_override(override).key_or_group
    except Exception:  # a string Hydra would not accept: fall back to the text before '='
        return override.split("=", 1)[0].lstrip("+~")


def group_key(overrides: Iterable[str], ignore: Iterable[str]) -> tuple[str, ...]:
    """What puts a job in its sweep group: its overrides minus the ignored keys (``seed``, the
    sweep's ``group_ignore``), sorted. The summaries group by it; the loggers tag each run with it.
    """
    ignored = set(ignore)
    return tuple(sorted(o for o in overrides if override_key(o) not in ignored))


def read_job(job_dir: Path, metric: str | None, seed_key: str = "seed") -> JobRecord:
    """Read one job; ``metric=None`` uses the job's ``task.monitor`` (or ``acc1``)."""
    problems: list[str] = []
    overrides = _read_overrides(job_dir / ".hydra" / "overrides.yaml", problems)
    config = _read_config(job_dir / ".hydra" / "config.yaml", problems)
    monitor = (
        config.get("task", {}).get("monitor") if isinstance(config.get("task"), dict) else None
    )
    seed = next((o.split("=", 1)[1] for o in overrides if override_key(o) == seed_key), None)
    if seed is None and config.get(seed_key) is not None:
        seed = str(config[seed_key])

    status, error, tb, best, test = _read_status(
        job_dir / "status.json", problems, monitor if isinstance(monitor, str) else None
    )
    record = JobRecord(
        name=job_dir.name,
        path=job_dir,
        overrides=overrides,
        status=status,
        error=error,
        traceback=tb,
        seed=seed,
        monitor=monitor if isinstance(monitor, str) else None,
        status_best_val=best,
        test_acc=test,
        problems=problems,
    )
    _read_metrics(job_dir / "metrics.csv", metric or record.monitor or DEFAULT_METRIC, record)
    return record


def _read_overrides(path: Path, problems: list[str]) -> list[str]:
    if not path.is_file():
        problems.append(f"{path.name} missing: grouped as a job without overrides")
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{path} unreadable ({exc.__class__.__name__}: {exc})")
        return []
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(o, str) for o in data):
        problems.append(
            f"{path} should hold a list of override strings, found {type(data).__name__}"
        )
        return []
    return [o.strip() for o in data]


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{path} unreadable ({exc.__class__.__name__}: {exc})")
        return {}
    return data if isinstance(data, dict) else {}


def _read_status(
    path: Path, problems: list[str], monitor: str | None = None
) -> tuple[str, str | None, str | None, float | None, float | None]:
    """status, error, traceback, best validation and test figure of the job's ``task.monitor``.

    The figures are under ``best_val_<monitor>``/``test_<monitor>``; runs of brisk before the
    keys were named for their metric wrote them as ``best_val_acc1``/``test_acc1`` whatever the
    metric, and are read from there.
    """
    if not path.is_file():
        return "missing", MISSING_STATUS_ERROR, None, None, None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ValueError('expected an object with a string "status"')
    except (OSError, ValueError) as exc:
        message = f"{path} unreadable ({exc.__class__.__name__}: {exc})"
        problems.append(message)
        return "unreadable", message, None, None, None
    error, tb = data.get("error"), data.get("traceback")
    metric = str(data.get("monitor") or monitor or DEFAULT_METRIC)
    best_key, test_key = f"best_val_{metric}", f"test_{metric}"
    return (
        data["status"],
        None if error is None else str(error),
        None if tb is None else str(tb),
        _number(data.get(best_key, data.get("best_val_acc1"))),
        _number(data.get(test_key, data.get("test_acc1"))),
    )


def _read_metrics(path: Path, metric: str, record: JobRecord) -> None:
    if not path.is_file():
        return
    clock = Clock()
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in ("step", "split") if c not in columns]
            if missing:
                record.problems.append(f"{path} lacks column(s) {missing}; found {columns}")
                return
            bad_rows = 0
            for row in reader:
                step = _number(row.get("step"))
                if step is None:
                    bad_rows += 1
                    continue
                split = row.get("split")
                raw_seconds = _number(row.get("seconds"))
                seconds = None if raw_seconds is None else clock.add(int(step), raw_seconds)
                if split == "train":
                    _append(record.train_loss, int(step), _number(row.get("loss")), seconds)
                elif split == "val":
                    _append(record.val, int(step), _number(row.get(metric)), seconds)
                elif split == "test":
                    value = _number(row.get(metric))
                    if value is not None:
                        record.test_from_metrics = value
            if bad_rows:
                record.problems.append(f"{path}: skipped {bad_rows} row(s) without a numeric step")
            if metric not in columns:
                record.problems.append(f"{path} has no '{metric}' column")
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        record.problems.append(f"{path} unreadable ({exc.__class__.__name__}: {exc})")
    for curve in (record.val, record.train_loss):
        curve.seconds = [
            clock.at(st) if t is None else t for st, t in zip(curve.steps, curve.seconds)
        ]
    last_step = max(record.val.steps + record.train_loss.steps, default=None)
    record.run_seconds = None if last_step is None else clock.at(last_step)


class Clock:
    """Wall-clock seconds since a run started, by step, across the sessions of a resumed run.

    The runner logs ``seconds`` since the start of the current process on its train rows; a
    resumed run starts again from 0. A drop in ``seconds`` marks a new session: it continues from
    the previous session's last row at that session's average pace (the steps redone after the
    restart and the restart itself are not counted). Rows without a clock (validation rows) get the
    time of the train row at their step, or a linear interpolation between the rows around it.
    """

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []
        self._last_raw: float | None = None
        self._offset = 0.0

    def add(self, step: int, raw: float) -> float:
        """The session-corrected seconds of the row logged at ``step`` with clock ``raw``; call in
        the order the rows were logged.
        """
        if self._last_raw is not None and raw < self._last_raw and self.points:
            prev_step, prev = self.points[-1]
            pace = prev / prev_step if prev_step > 0 else 0.0
            self._offset = prev + pace * max(0, step - prev_step) - raw
        self._last_raw = raw
        self.points.append((step, raw + self._offset))
        return self.points[-1][1]

    def at(self, step: int) -> float | None:
        """Seconds at ``step``: the last point logged at that step, else interpolated between the
        points around it, else extrapolated at the run's average pace; None without points."""
        if not self.points:
            return None
        exact = [t for s, t in self.points if s == step]
        if exact:
            return exact[-1]
        before = (0, 0.0)
        for point in self.points:
            if point[0] > step:
                (s0, t0), (s1, t1) = before, point
                return t0 + (t1 - t0) * (step - s0) / max(1, s1 - s0)
            before = point
        last_step, last = self.points[-1]
        return last + (last / last_step if last_step > 0 else 0.0) * (step - last_step)


def _append(curve: Curve, step: int, value: float | None, seconds: float | None = None) -> None:
    if value is not None:
        curve.steps.append(step)
        curve.values.append(value)
        curve.seconds.append(seconds)


def _number(value: Any) -> float | None:
    """A finite float, or None for blanks, nulls, NaN and anything that is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
