"""The sweep's convergence picture: validation accuracy against steps and against wall-clock
seconds, and training loss against steps.

One line per configuration (mean over its seeds at each logged step) with a ±1 std band. Seeds of
one configuration log at the same steps, so values are pooled by exact step; where a seed stopped
early the band narrows to the seeds that are left. On the seconds panel a point sits at the mean
over seeds of the seconds at which that step was logged. Drawn on a bare ``Figure`` (Agg canvas) so
summarising never touches pyplot's global backend or needs a display.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from brisk.sweep.jobs import ConfigGroup, Curve, JobRecord


def mean_band(curves: Sequence[Curve]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and sample std (0 where one seed has the step) of several seeds' curves."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in zip(curve.steps, curve.values):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def mean_seconds(curves: Sequence[Curve]) -> dict[int, float]:
    """Mean wall-clock seconds at each step over the curves that know it."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, seconds in zip(curve.steps, curve.seconds):
            if seconds is not None:
                by_step.setdefault(step, []).append(seconds)
    return {step: statistics.fmean(values) for step, values in by_step.items()}


def plot_curves(
    groups: Sequence[ConfigGroup], metric: str, path: Path, target: float | None = None
) -> Path:
    """Write the two-panel PNG to ``path`` (atomically); ``target`` adds a dashed line."""
    figure = Figure(figsize=(17, 4.5), layout="constrained")
    figure.suptitle("mean over seeds, band = ±1 std", fontsize="medium")
    FigureCanvasAgg(figure)
    acc_ax, clock_ax, loss_ax = figure.subplots(1, 3)
    panels: list[tuple[Axes, Callable[[JobRecord], Curve], float, str, bool]] = [
        (acc_ax, lambda j: j.val, 100.0, f"validation {metric} (%)", False),
        (clock_ax, lambda j: j.val, 100.0, f"validation {metric} (%) against time", True),
        (loss_ax, lambda j: j.train_loss, 1.0, "training loss", False),
    ]
    palette = _palette(len(groups))
    for ax, pick, scale, title, on_clock in panels:
        for colour, group in zip(palette, groups):
            curves = [pick(j) for j in group.ok_jobs if pick(j).steps]
            if not curves:
                continue
            steps, mean, std = mean_band(curves)
            xs: list[float] = [float(s) for s in steps]
            if on_clock:
                clock = mean_seconds(curves)
                keep = [i for i, s in enumerate(steps) if s in clock]
                xs = [clock[steps[i]] for i in keep]
                mean, std = [mean[i] for i in keep], [std[i] for i in keep]
                if not keep:
                    continue
            ax.plot(
                xs,
                [scale * m for m in mean],
                color=colour,
                label=f"{group.label} (n={len(curves)})",
                marker="o" if len(xs) <= 20 else None,
                markersize=3,
            )
            ax.fill_between(
                xs,
                [scale * (m - s) for m, s in zip(mean, std)],
                [scale * (m + s) for m, s in zip(mean, std)],
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
        if ax is not loss_ax and target is not None and ax.lines:
            ax.axhline(100.0 * target, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_title(title)
        ax.set_xlabel("wall-clock seconds" if on_clock else "step")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(
                0.5,
                0.5,
                "no finished job logged this",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    if acc_ax.lines or loss_ax.lines:
        # one legend for the three panels, below them: configuration labels can be long
        handles, labels = (acc_ax if acc_ax.lines else loss_ax).get_legend_handles_labels()
        ncols = max(1, min(3, 170 // max(len(label) for label in labels)))
        rows = -(-len(labels) // ncols)
        figure.set_figheight(4.5 + 0.2 * rows)
        figure.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
