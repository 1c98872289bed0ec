"""Summarise a Hydra multirun directory: one table and one picture comparing its configurations.

Jobs are grouped by their overrides minus ``seed=`` (and minus any key in ``group_ignore``), so a
sweep ``optimizer.lr=0.05,0.1 seed=0,1,2`` gives two configurations of three seeds each. Only jobs
whose ``status.json`` says ``ok`` enter the statistics; every other job is listed with its error.

Steps-to-target measures convergence speed, the number a whitening or teacher sweep is about: the
first validation step at which a job reaches the target accuracy. By default the target is the
final mean validation accuracy of the best *baseline* configuration (one whose overrides include
``whitening=none`` or ``teacher=none``; when no configuration does, every configuration counts as a
baseline), so the column answers "how many steps does each method need to match the baseline?".
Time to target answers the same question on the clock: the wall-clock seconds (training plus
evaluation, as the run logged them) at that first validation, and their ratio to the baseline
configuration's mean run time.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brisk.sweep.jobs import (
    ConfigGroup,
    JobRecord,
    Stat,
    Target,
    find_job_dirs,
    group_key,
    read_job,
)

DEFAULT_BASELINES = ("whitening=none", "teacher=none")
PER_JOB_CSV = "summary.csv"
GROUPED_CSV = "summary_grouped.csv"
MARKDOWN = "summary.md"
CURVES_PNG = "summary_curves.png"


@dataclass(frozen=True)
class SummaryPaths:
    """The files :func:`summarize` wrote, all inside the sweep directory."""

    per_job_csv: Path
    grouped_csv: Path
    markdown: Path
    curves_png: Path


def summarize(
    sweep_dir: str | os.PathLike[str],
    target_acc: float | None = None,
    group_ignore: Sequence[str] = (),
    baselines: Sequence[str] = DEFAULT_BASELINES,
    metric: str | None = None,
    seed_key: str = "seed",
) -> SummaryPaths:
    """Read every job of ``sweep_dir`` and write the per-job CSV, grouped CSV, Markdown and PNG.

    ``metric`` is the validation column to compare (default: the jobs' ``task.monitor``, else
    ``acc1``). Accuracies are fractions in [0, 1] as the runner logs them. Files are replaced
    atomically, so a summary refreshed while jobs still run is never half-written.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist or is not a directory")
    job_dirs = find_job_dirs(root)
    if not job_dirs:
        raise ValueError(
            f"{root} holds no job directories: expected sub-folders 0/, 1/, ... each with "
            ".hydra/overrides.yaml (and metrics.csv, status.json once the job ran)"
        )
    jobs = [read_job(d, metric, seed_key) for d in job_dirs]
    metric_name = metric or _common_monitor(jobs)
    groups = group_jobs(jobs, ignore={seed_key, *group_ignore})
    target = choose_target(groups, target_acc, baselines)

    paths = SummaryPaths(root / PER_JOB_CSV, root / GROUPED_CSV, root / MARKDOWN, root / CURVES_PNG)
    _write_text(paths.per_job_csv, per_job_csv(jobs, groups, target, metric_name))
    _write_text(paths.grouped_csv, grouped_csv(groups, target, metric_name))
    _write_text(paths.markdown, markdown(root, jobs, groups, target, metric_name, paths))
    from brisk.sweep.plots import plot_curves  # matplotlib only when a summary is written

    plot_curves(groups, metric_name, paths.curves_png, target.value)
    return paths


def group_jobs(jobs: Sequence[JobRecord], ignore: set[str]) -> list[ConfigGroup]:
    """Group jobs by overrides minus the ignored keys, in order of first appearance.

    Each group is labelled by the overrides that differ between groups; overrides shared by every
    job (``debug=fast``, say) would only repeat themselves on each row.
    """
    groups: dict[tuple[str, ...], ConfigGroup] = {}
    for job in jobs:
        key = group_key(job.overrides, ignore)
        groups.setdefault(key, ConfigGroup(key)).jobs.append(job)
    shared = set.intersection(*(set(k) for k in groups)) if groups else set()
    for group in groups.values():
        first = group.jobs[0].overrides  # command-line order reads better than sorted order
        varying = [o for o in first if o in group.key and o not in shared]
        group.label = " ".join(varying) or " ".join(group.key) or "(no overrides)"
    return list(groups.values())


def choose_target(
    groups: Sequence[ConfigGroup], target_acc: float | None, baselines: Sequence[str]
) -> Target:
    """The accuracy whose first crossing is counted in steps (see the module docstring)."""
    means = [(g, g.stat(lambda j: j.final_val_acc).mean) for g in groups]
    scored = [(g, m) for g, m in means if m is not None]
    marked = [(g, m) for g, m in scored if any(b in g.key for b in baselines)]
    pool, kind = (marked, "baseline") if marked else (scored, "")
    best = max(pool, key=lambda gm: gm[1]) if pool else None
    reference: dict[str, float | None] = {}
    if best is not None:
        reference = {
            "reference_seconds": best[0].stat(lambda j: j.run_seconds).mean,
            "reference_steps": best[0].stat(lambda j: _as_float(_last_step(j))).mean,
        }
    if target_acc is not None:
        return Target(float(target_acc), "given", **reference)
    if best is None:
        return Target(None, "no completed job has validation rows")
    what = f"best {kind} configuration" if kind else "best configuration"
    return Target(best[1], f"final mean of the {what} `{best[0].label}`", **reference)


def per_job_csv(
    jobs: Sequence[JobRecord], groups: Sequence[ConfigGroup], target: Target, metric: str
) -> str:
    """One row per job: its outcome, final and best metrics, and steps and seconds to the target."""
    label_of = {id(j): g.label for g in groups for j in g.jobs}
    rows: list[dict[str, object]] = [
        {
            "job": j.name,
            "config": label_of[id(j)],
            "overrides": " ".join(j.overrides),
            "seed": j.seed,
            "status": j.status,
            "metric": metric,
            "final_val_acc": j.final_val_acc,
            "best_val_acc": j.best_val_acc,
            "test_acc": j.final_test_acc,
            "final_train_loss": j.final_train_loss,
            "last_step": _last_step(j),
            "run_seconds": j.run_seconds,
            "target_acc": target.value,
            "steps_to_target": _steps_to_target(j, target),
            "seconds_to_target": _seconds_to_target(j, target),
            "error": j.error,
            "traceback": j.traceback,
            "problems": "; ".join(j.problems) or None,
        }
        for j in jobs
    ]
    return _csv(rows)


def grouped_csv(groups: Sequence[ConfigGroup], target: Target, metric: str) -> str:
    """One row per configuration: mean and sample std over its finished seeds, and the time to
    the target divided by the baseline's run time.
    """
    rows = []
    for g in groups:
        row: dict[str, object] = {
            "config": g.label,
            "overrides": " ".join(g.key),
            "metric": metric,
            "n_jobs": len(g.jobs),
            "n_ok": len(g.ok_jobs),
            "seeds": " ".join(str(j.seed) for j in g.ok_jobs if j.seed is not None),
        }
        for name, stat in _group_stats(g, target).items():
            row[f"{name}_mean"], row[f"{name}_std"] = stat.mean, stat.std
        row["steps_to_target_reached"] = _reached(g, target)
        row["seconds_to_target_ratio"] = _time_ratio(g, target)
        row["target_acc"] = target.value
        row["reference_seconds"] = target.reference_seconds
        rows.append(row)
    return _csv(rows)


def markdown(
    root: Path,
    jobs: Sequence[JobRecord],
    groups: Sequence[ConfigGroup],
    target: Target,
    metric: str,
    paths: SummaryPaths,
) -> str:
    """The human-readable summary: a table of the configurations, the curves, then the jobs that
    did not finish with their errors.
    """
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    shared = set.intersection(*(set(g.key) for g in groups))
    common = [o for o in jobs[0].overrides if o in shared]
    target_text = (
        f"{100 * target.value:.2f}% ({target.reason})"
        if target.value is not None
        else target.reason
    )
    lines = [
        f"# Sweep summary: {root.name}",
        "",
        f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
        f"Validation metric: `{metric}`. Cells are mean ± sample std over the seeds of the jobs "
        "that finished ok; accuracies in %.",
        f"Target accuracy for steps-to-target: {target_text}.",
        "Time to target: the step and the wall-clock seconds (training and evaluation since the "
        "run started) of the first validation at or above the target, over the seeds that reach "
        "it; '÷ baseline' divides the mean seconds by the baseline configuration's mean run time"
        + (
            f" ({target.reference_seconds:.0f} s)."
            if target.reference_seconds is not None
            else " (none here)."
        ),
    ]
    if common:
        lines.append("Overrides shared by every job: " + " ".join(f"`{o}`" for o in common) + ".")
    lines += [
        "",
        "| config | ok/jobs | final val acc | best val acc | test acc | final train loss "
        "| steps to target (reached) | seconds to target | ÷ baseline | run seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        s = _group_stats(g, target)
        cells = [
            f"`{_md(g.label)}`",
            f"{len(g.ok_jobs)}/{len(g.jobs)}",
            _fmt(s["final_val_acc"], percent=True),
            _fmt(s["best_val_acc"], percent=True),
            _fmt(s["test_acc"], percent=True),
            _fmt(s["final_train_loss"], digits=4),
            f"{_fmt(s['steps_to_target'], digits=0)} ({_reached(g, target)})",
            _fmt(s["seconds_to_target"], digits=0),
            _ratio_text(_time_ratio(g, target)),
            _fmt(s["run_seconds"], digits=0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![validation accuracy against steps and seconds, training loss]({paths.curves_png.name})",
        "",
    ]

    failed = [j for j in jobs if not j.ok]
    if failed:
        lines += ["## Failed or unfinished jobs", "", "| job | overrides | status | error |"]
        lines.append("|---|---|---|---|")
        for j in failed:
            lines.append(
                f"| {j.name} | `{_md(' '.join(j.overrides))}` | {j.status} | "
                f"{_md(_last_line(j.error))} |"
            )
        lines += [
            "",
            f"Full errors and tracebacks: `{paths.per_job_csv.name}` and each job's `status.json`.",
            "",
        ]
    noted = [j for j in jobs if j.problems]
    if noted:
        lines += ["## Files that could not be read", ""]
        lines += [f"- job {j.name}: " + "; ".join(_md(p) for p in j.problems) for j in noted]
        lines.append("")
    return "\n".join(lines)


def _group_stats(g: ConfigGroup, target: Target) -> dict[str, Stat]:
    return {
        "final_val_acc": g.stat(lambda j: j.final_val_acc),
        "best_val_acc": g.stat(lambda j: j.best_val_acc),
        "test_acc": g.stat(lambda j: j.final_test_acc),
        "final_train_loss": g.stat(lambda j: j.final_train_loss),
        "steps_to_target": g.stat(lambda j: _as_float(_steps_to_target(j, target))),
        "seconds_to_target": g.stat(lambda j: _seconds_to_target(j, target)),
        "run_seconds": g.stat(lambda j: j.run_seconds),
    }


def _steps_to_target(job: JobRecord, target: Target) -> int | None:
    return None if target.value is None else job.val.first_step_reaching(target.value)


def _seconds_to_target(job: JobRecord, target: Target) -> float | None:
    hit = None if target.value is None else job.val.first_reaching(target.value)
    return None if hit is None else hit[1]


def _time_ratio(g: ConfigGroup, target: Target) -> float | None:
    """Mean seconds to target over the baseline's mean run time (what "0.7x SGD's time" means)."""
    mean = g.stat(lambda j: _seconds_to_target(j, target)).mean
    if mean is None or not target.reference_seconds:
        return None
    return mean / target.reference_seconds


def _ratio_text(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def _last_step(job: JobRecord) -> int | None:
    return max(job.val.steps + job.train_loss.steps, default=None)


def _reached(g: ConfigGroup, target: Target) -> str:
    hits = sum(_steps_to_target(j, target) is not None for j in g.ok_jobs)
    return f"{hits}/{len(g.ok_jobs)}"


def _common_monitor(jobs: Sequence[JobRecord]) -> str:
    monitors = {j.monitor for j in jobs if j.monitor}
    return monitors.pop() if len(monitors) == 1 else "acc1"


def _as_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _fmt(stat: Stat, percent: bool = False, digits: int = 2) -> str:
    if stat.mean is None:
        return "—"
    scale = 100.0 if percent else 1.0
    mean = f"{scale * stat.mean:.{digits}f}" if digits else f"{stat.mean:.0f}"
    if stat.std is None:
        return mean
    std = f"{scale * stat.std:.{digits}f}" if digits else f"{stat.std:.0f}"
    return f"{mean} ± {std}"


def _md(text: str) -> str:
    """Keep a cell on one line and its pipes from splitting the table."""
    return " ".join(text.split()).replace("|", "\\|").replace("`", "'")


def _last_line(error: str | None) -> str:
    """The exception line of a traceback: what went wrong, without the stack.

    Hydra's ``instantiate`` wraps the error of the object it was building as ``Error in call to
    target ...:\nRuntimeError('...')\nfull_key: model``; the wrapped error is what went wrong, so
    its line is shown (as ``RuntimeError: ...``), with the key that was being built.
    """
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    key = None
    if lines and lines[-1].startswith("full_key:"):
        key = lines.pop().removeprefix("full_key:").strip()
    if not lines:
        return "(no error recorded)"
    line = _unrepr(lines[-1])
    return f"{line} (building {key})" if key else line


def _unrepr(line: str) -> str:
    """``RuntimeError("message")`` (an exception's repr) as ``RuntimeError: message``."""
    match = re.fullmatch(r"(?P<name>[A-Za-z_][\w.]*)\((?P<args>(?P<q>['\"]).*(?P=q))\)", line)
    if match is None:
        return line
    try:
        message = ast.literal_eval(match["args"])
    except (ValueError, SyntaxError):
        return line
    return f"{match['name']}: {message}" if isinstance(message, str) else line


def _csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
