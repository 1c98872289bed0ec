#!/usr/bin/env python
"""Summarise a finished (or still running) sweep: summarize.py SWEEP_DIR [--target-acc 0.9].

Writes summary.csv, summary_grouped.csv, summary.md and summary_curves.png into SWEEP_DIR and
prints the Markdown table: per configuration the final test accuracy (mean +- std over seeds), the
steps and wall-clock seconds to the baseline's final validation accuracy and that time as a
fraction of the baseline's run time; the picture shows validation accuracy against steps and
against seconds. The same summary is written automatically during and at the end of `train -m`.
"""

from __future__ import annotations

import argparse
import sys

from brisk.sweep.summary import DEFAULT_BASELINES, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory holding job folders 0/, 1/, ...")
    parser.add_argument(
        "--target-acc",
        type=float,
        default=None,
        help="accuracy in [0, 1] for steps-to-target (default: the best baseline's final mean)",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=None,
        metavar="OVERRIDE",
        help="override marking baseline configurations (repeatable; default: "
        f"{' '.join(DEFAULT_BASELINES)})",
    )
    parser.add_argument(
        "--group-ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="also pool jobs that differ only in this key, like seed (repeatable)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="validation column to compare (default: task.monitor or acc1)",
    )
    args = parser.parse_args(argv)
    if args.target_acc is not None and not 0.0 <= args.target_acc <= 1.0:
        parser.error(f"--target-acc must be a fraction in [0, 1], got {args.target_acc}")
    try:
        paths = summarize(
            args.sweep_dir,
            target_acc=args.target_acc,
            group_ignore=args.group_ignore,
            baselines=args.baseline or DEFAULT_BASELINES,
            metric=args.metric,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"summarize.py: {exc}", file=sys.stderr)
        return 2
    print(paths.markdown.read_text())
    print(f"wrote {paths.per_job_csv}, {paths.grouped_csv}, {paths.markdown}, {paths.curves_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
