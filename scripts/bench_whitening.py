"""Cost of the whitening algorithms, measured against the complexity claims of arXiv 2010.01546.

Three tables (printed, and written as JSON with ``--json``):

1. ``transform``: per layer, classical whitening's sample transform (forward ``X P^T`` and the
   backward product with ``P``: ``2 N M^2``) against the gradient transform ``G Q`` (``S M^2``),
   next to the predicted ratio ``S / (2B)`` (one sample per image, N = B).
2. ``recursive``: one update of ``recursive`` (``steps`` rank-1 steps, O(M^2) each) against one
   ``evd`` refresh (damped ``eigh`` and inverse, O(M^3)) for M = 64..2304, next to M.
3. ``step``: the training-step overhead of each algorithm with its shipped configuration
   (``conf/whitening/*.yaml``), whitened step / plain SGD step, for ResNet-20 at batch 128 on
   32x32 inputs.  Methods run interleaved in rounds whose length is a multiple of every
   statistics/refresh period, so the periodic work is included; reported are the ratio of mean
   step times over all rounds and the median of the per-round ratios, for wall-clock time and for
   the process's CPU time (with one thread the CPU time is what the step costs, and it is far less
   disturbed than wall-clock time when other jobs share the machine).

Only ratios measured side by side in one process are meaningful; absolute times depend on the
machine and its load.  ``--quick`` shrinks every grid for a smoke run.

    python scripts/bench_whitening.py --threads 2 --json outputs/bench_whitening.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

import brisk.config  # noqa: F401  (registers the config schemas)
from brisk.models import create_model
from brisk.whitening.evd import inverse_from_eigh
from brisk.whitening.recursive import equalise_top_eigenvalue


def _time_all(fns: dict, repeats: int, block_s: float = 0.002) -> dict[str, float]:
    """Seconds per call of each function: interleaved blocks, minimum over ``repeats`` rounds.

    The machine is shared, so the functions alternate (each sees the same load) and the minimum
    over rounds (the least disturbed block) is the estimate.
    """
    counts = {}
    for name, fn in fns.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        counts[name] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-7)))
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / counts[name])
    return best


def bench_transform(grid: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    rows = []
    for m, s, b in grid:
        x = torch.randn(b, m)
        p = torch.randn(m, m)
        grad_white = torch.randn(b, m)
        g = torch.randn(s, m)
        q = torch.randn(m, m)

        def sample_transform(x=x, p=p, gw=grad_white):
            x @ p.T  # forward: whitened samples
            gw @ p  # backward: gradient of the inputs through P

        t = _time_all({"feature": sample_transform, "gradient": lambda g=g, q=q: g @ q}, repeats)
        t_feature, t_gradient = t["feature"], t["gradient"]
        rows.append(
            {
                "M": m,
                "S": s,
                "B": b,
                "feature_s": t_feature,
                "gradient_s": t_gradient,
                "measured_ratio": t_gradient / t_feature,
                "predicted_ratio": s / (2 * b),
            }
        )
    return rows


def _spd(m: int, dtype: torch.dtype) -> torch.Tensor:
    a = torch.randn(m, 2 * m, dtype=dtype)
    return (a @ a.T / (2 * m))[None]


def bench_recursive(dims: list[int], steps: int, power_iters: int, repeats: int) -> list[dict]:
    rows = []
    for m in dims:
        r = _spd(m, torch.float32)
        damping = torch.tensor([1e-2 * r[0].trace().item() / m])
        eye = torch.eye(m)[None]

        def evd_refresh(r=r, damping=damping, eye=eye):
            evals, evecs = torch.linalg.eigh(r + damping[:, None, None] * eye)
            inverse_from_eigh(evals, evecs, normalize=True)

        def recursive_update(r=r, damping=damping, eye=eye):
            rt, t, q, tt = r.clone(), eye.clone(), eye.clone(), eye.clone()
            for _ in range(steps):
                equalise_top_eigenvalue(rt, t, q, power_iters, damping, tt)

        def copies(r=r, eye=eye):  # the clones inside recursive_update, subtracted below
            r.clone(), eye.clone(), eye.clone(), eye.clone()

        t = _time_all(
            {"evd": evd_refresh, "rec": recursive_update, "copies": copies},
            repeats if m <= 576 else 3,
        )
        t_evd, t_rec = t["evd"], max(t["rec"] - t["copies"], 1e-9)
        rows.append(
            {
                "M": m,
                "evd_refresh_s": t_evd,
                "recursive_update_s": t_rec,
                "recursive_step_s": t_rec / steps,
                "evd_over_recursive_step": t_evd / (t_rec / steps),
                "evd_over_recursive_update": t_evd / t_rec,
            }
        )
    if len(rows) > 1:
        xs = [math.log(r["M"]) for r in rows]
        for key in ("evd_refresh_s", "recursive_step_s"):
            ys = [math.log(r[key]) for r in rows]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum(
                (x - mx) ** 2 for x in xs
            )
            for r in rows:
                r[f"loglog_slope_{key}"] = slope
    return rows


def _whitening(name: str):
    with initialize_config_module(config_module="brisk.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"whitening={name}", "task=cifar"])
    return instantiate(cfg.whitening), dict(cfg.whitening)


def bench_step(methods: list[str], rounds: int, batch: int, steps_per_round: int | None) -> dict:
    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(10, (batch,))
    runs = {}
    period = 1
    for name in methods:
        whitening, cfg = _whitening(name)
        for key in ("stats_every", "inverse_every"):
            if key in cfg:
                period = math.lcm(period, int(cfg[key]))
        model = copy.deepcopy(base)
        whitening.attach(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        runs[name] = {"model": model, "w": whitening, "opt": opt, "step": 0, "times": [], "cpu": []}
    length = steps_per_round or period

    def one_step(run: dict) -> None:
        model, w, opt, step = run["model"], run["w"], run["opt"], run["step"]
        w.begin_step(step)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        w.precondition(step)
        opt.step()
        run["step"] += 1

    for run in runs.values():  # warm-up: first statistics and first refresh
        for _ in range(2):
            one_step(run)
        run["w"].metrics()
    order = list(runs)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            run = runs[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(length):
                one_step(run)
            run["times"].append((time.perf_counter() - t0) / length)
            run["cpu"].append((time.process_time() - c0) / length)
    plain, plain_cpu = runs[methods[0]]["times"], runs[methods[0]]["cpu"]
    out = {"batch": batch, "steps_per_round": length, "rounds": rounds, "methods": {}}
    for name, run in runs.items():
        split = {k: v for k, v in run["w"].metrics().items() if k.startswith("whiten/seconds")}
        steps_timed = rounds * length
        out["methods"][name] = {
            "step_s_mean": statistics.fmean(run["times"]),
            "ratio_of_means": statistics.fmean(run["times"]) / statistics.fmean(plain),
            "median_round_ratio": statistics.median(a / b for a, b in zip(run["times"], plain)),
            "cpu_step_s_mean": statistics.fmean(run["cpu"]),
            "cpu_ratio_of_means": statistics.fmean(run["cpu"]) / statistics.fmean(plain_cpu),
            **{f"{k.split('/')[-1]}_per_step": v / steps_timed for k, v in split.items()},
        }
    return out


def _table(rows: list[dict], keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--sections", nargs="+", default=["transform", "recursive", "step"])
    p.add_argument("--methods", nargs="+", default=["none", "evd", "recursive"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps-per-round", type=int, default=None, help="default: lcm of the periods")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 40
    results: dict = {"threads": args.threads, "torch": torch.__version__}

    if "transform" in args.sections:
        grid = (
            [(144, 16, 32), (576, 64, 128)]
            if args.quick
            else [
                (m, s, b) for m in (144, 576, 1152) for s in (16, 64, 512) for b in (32, 128, 512)
            ]
        )
        results["transform"] = bench_transform(grid, repeats)
        print("\n## 1. sample transform (feature) vs gradient transform (evd), per layer\n")
        print(
            _table(
                results["transform"],
                ["M", "S", "B", "feature_s", "gradient_s", "measured_ratio", "predicted_ratio"],
            )
        )
    if "recursive" in args.sections:
        dims = [64, 256] if args.quick else [64, 144, 288, 576, 1152, 2304]
        results["recursive"] = bench_recursive(dims, steps=4, power_iters=8, repeats=repeats)
        print(
            "\n## 2. one recursive update (4 rank-1 steps, 8 power iterations) vs one evd refresh\n"
        )
        print(
            _table(
                results["recursive"],
                [
                    "M",
                    "evd_refresh_s",
                    "recursive_update_s",
                    "recursive_step_s",
                    "evd_over_recursive_step",
                    "evd_over_recursive_update",
                ],
            )
        )
        if "loglog_slope_evd_refresh_s" in results["recursive"][0]:
            r0 = results["recursive"][0]
            print(
                f"\nlog-log slope of time against M: evd refresh {r0['loglog_slope_evd_refresh_s']:.2f}, "
                f"recursive step {r0['loglog_slope_recursive_step_s']:.2f}"
            )
    if "step" in args.sections:
        results["step"] = bench_step(
            args.methods,
            1 if args.quick else args.rounds,
            16 if args.quick else 128,
            2 if args.quick else args.steps_per_round,
        )
        step = results["step"]
        print(
            f"\n## 3. training step, ResNet-20, batch {step['batch']}, {step['rounds']} rounds of "
            f"{step['steps_per_round']} steps\n"
        )
        rows = [{"method": k, **v} for k, v in step["methods"].items()]
        keys = ["method", "step_s_mean", "ratio_of_means", "median_round_ratio"]
        keys += ["cpu_step_s_mean", "cpu_ratio_of_means"]
        keys += sorted({k for r in rows for k in r if k.endswith("_per_step")})
        print(_table(rows, keys))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
