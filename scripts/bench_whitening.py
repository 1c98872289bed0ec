"""Cost of the whitening algorithms, measured against the complexity claims of arXiv 2010.01546.

Four tables (printed, and written as JSON with ``--json``):

0. ``ops``: compute operators per training step, amortised over one cycle of the shipped cadence,
   and the host synchronisations of that cycle, for ResNet-20 at batch 128 (the CPU profiler
   counting leaf ``aten`` operators that compute, ``brisk.whitening.audit``): a stand-in for the
   kernels a GPU step launches, and the reason a step waits for the host.

1. ``transform``: per layer, classical whitening's sample transform (forward ``X P^T`` and the
   backward product with ``P``: ``2 N M^2``) against the gradient transform ``G Q`` (``S M^2``),
   next to the predicted ratio ``S / (2B)`` (one sample per image, N = B).
2. ``refresh``: one refresh of ``recursive`` (``steps`` Newton-Schulz steps, two ``M^3`` products
   each) against one ``evd`` refresh (Cholesky factor, float64 retry and triangular solve) and the
   eigen-decompositions, for M = 144..4608.
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
from brisk.whitening import EVDWhitening, RecursiveWhitening
from brisk.whitening.audit import audit_cycle
from brisk.whitening.evd import clipped_from_eigh, inverse_from_eigh
from brisk.whitening.linalg import damped_eigh, damped_inverse
from brisk.whitening.recursive import newton_schulz, normalised
from brisk.whitening.settings import EVDSettings, RecursiveSettings


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


def _spd(m: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    a = torch.randn(m, 2 * m, dtype=dtype, device=device)
    return (a @ a.T / (2 * m))[None]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, repeats: int, device: str) -> float:
    """Seconds per call: minimum over ``repeats`` synchronised calls after one warm-up."""
    fn()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


REFRESH_METHODS = ("evd_eigh64", "evd", "clip", "recursive")


def bench_refresh(dims: list[int], repeats: int, device: str, rows_n: int = 1024) -> list[dict]:
    """Every cost of one refresh cycle, per method and M, at the shipped cadence.

    Parts: ``statistics`` (centre ``N = 1024`` rows, accumulate ``X^T X``: one statistics update),
    ``decomposition`` (one refresh: the inverse, or ``steps`` block steps, with the backup copies
    the real refresh makes), ``transform`` (``G Q`` for S = M / 9 outputs, a 3x3 convolution with
    as many outputs as input channels; paid every step) and ``logging`` (the condition numbers,
    paid only with ``condition_every`` > 0, off by default).  ``per_step`` amortises them over
    the shipped cadence (statistics every 10 steps, refresh every 20, recursive every 10).
    ``evd_eigh64`` is the float64 eigen-decomposition ``evd`` used before the Cholesky inverse.
    """
    evd_s, rec_s = EVDSettings(), RecursiveSettings()
    out = []
    for m in dims:
        cov = _spd(m, torch.float32, device)
        damping = torch.tensor([rec_s.eps * cov[0].trace().item() / m], device=device)
        x = torch.randn(rows_n, 1, m, device=device)
        s_out = max(16, m // 9)
        g = torch.randn(1, s_out, m, device=device)
        eye = torch.eye(m, device=device)[None]
        state = {"q": eye.clone()}

        def statistics_update(x=x):
            c = x - x.mean(0)
            by_group = c.transpose(0, 1)
            return by_group.transpose(1, 2) @ by_group

        def transform(g=g, q=state["q"]):
            return g @ q

        def evd_eigh64(cov=cov, damping=damping):
            decomposed = damped_eigh(cov, damping, torch.float64)
            return inverse_from_eigh(*decomposed, normalize=True).float()

        def evd_cholesky(cov=cov, damping=damping):
            return damped_inverse(cov, damping, normalize=True)

        def clip(cov=cov, damping=damping):
            decomposed = damped_eigh(cov, damping, torch.float64)
            return clipped_from_eigh(*decomposed, normalize=True).float()

        def recursive(state=state, cov=cov, damping=damping):
            a, _ = normalised(cov, damping)
            state["q"] = newton_schulz(a, state["q"], rec_s.steps)

        def logging_evd(cov=cov):
            return torch.linalg.eigvalsh(cov.double())

        def logging_recursive(state=state, cov=cov):
            root = torch.linalg.cholesky(state["q"].double())
            white = root.transpose(-1, -2) @ cov.double() @ root
            torch.linalg.eigvalsh(cov.double()), torch.linalg.eigvalsh(white)

        reps = repeats if m <= 1152 else max(2, repeats // 10)
        t_stats = _timed(statistics_update, reps, device)
        t_tr = _timed(transform, reps, device)
        t_log = _timed(logging_evd, max(1, reps // 4), device)
        decomps = {
            "evd_eigh64": evd_eigh64,
            "evd": evd_cholesky,
            "clip": clip,
            "recursive": recursive,
        }
        for name, fn in decomps.items():
            every = rec_s.inverse_every if name == "recursive" else evd_s.inverse_every
            row = {
                "M": m,
                "method": name,
                "statistics_s": t_stats,
                "decomposition_s": _timed(fn, max(1, reps // (4 if "eigh" in name else 1)), device),
                "transform_s": t_tr,
                "logging_s": _timed(logging_recursive, 1, device) if name == "recursive" else t_log,
            }
            row["per_step_s"] = (
                row["statistics_s"] / evd_s.stats_every
                + row["decomposition_s"] / every
                + row["transform_s"]
            )
            out.append(row)
            print(json.dumps(row), flush=True)  # progress: a slow machine may not reach the end
    return out


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


def bench_resnet50(
    methods: list[str],
    rounds: int,
    batch: int,
    image: int,
    device: str,
    threads: int,
    max_block: int | None = None,
) -> dict:
    """torchvision ResNet-50, every conv and the fc whitened (blocks above ``max_block``), with
    the shipped settings, against a plain step: side by side in one process.

    Methods alternate in rounds of ``lcm(stats_every, inverse_every)`` steps, so the periodic
    work is in every round; the clock is read (and, on a GPU, synchronised) only at round
    boundaries, so no step waits for the host.  The per-part breakdown is measured afterwards in
    isolation, synchronised around each part, and amortised over the cadence: ``stats`` (the
    forward pass with statistics on, minus without, plus the commit), ``refresh`` (every layer's
    decomposition or update) and ``transform`` (every layer's ``G Q``).
    """
    import torchvision

    torch.manual_seed(0)
    base = torchvision.models.resnet50(num_classes=1000)
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(1000, (batch,), device=device)
    classes = {"evd": EVDWhitening, "recursive": RecursiveWhitening}
    runs: dict[str, dict] = {}
    period = 1
    for name in methods:
        model = copy.deepcopy(base).to(device)
        extra = {} if max_block is None else {"max_block": max_block}
        w = classes[name](model, **extra) if name in classes else None
        if w is not None:
            period = math.lcm(period, w.stats_every, w.inverse_every)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        runs[name] = {"model": model, "w": w, "opt": opt, "step": 0, "times": []}

    def one_step(run: dict) -> None:
        model, w, opt = run["model"], run["w"], run["opt"]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if w is not None:
            w.step()
        opt.step()
        run["step"] += 1

    for run in runs.values():  # warm-up: the first statistics and refresh
        for _ in range(2):
            one_step(run)
    order = list(runs)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            run = runs[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(period):
                one_step(run)
            _sync(device)
            run["times"].append((time.perf_counter() - t0) / period)
    if rounds == 0:  # parts only (a slow CPU): one synchronised step each after the warm-up
        for run in runs.values():
            _sync(device)
            t0 = time.perf_counter()
            one_step(run)
            _sync(device)
            run["times"].append(time.perf_counter() - t0)
    out: dict = {"batch": batch, "image": image, "device": device, "threads": threads}
    out.update(steps_per_round=period, rounds=rounds, methods={})
    plain = runs[methods[0]]["times"]
    for name, run in runs.items():
        w = run["w"]
        row: dict = {"step_s": statistics.fmean(run["times"]) if run["times"] else math.nan}
        if plain and run["times"]:
            row["ratio"] = row["step_s"] / statistics.fmean(plain)
            row["median_round_ratio"] = statistics.median(
                a / b for a, b in zip(run["times"], plain)
            )
        if w is not None:
            row.update(_resnet_parts(run, x, y, device))
            row["layers"] = len(w.layers)
            row["max_M"] = max(layer.adapter.dim * layer.adapter.blocks for layer in w.layers)
            row["max_block"] = max(layer.adapter.dim for layer in w.layers)
            row["skipped"] = len(w.skipped)
        out["methods"][name] = row
    if plain:
        t_plain = statistics.fmean(plain)
        for row in out["methods"].values():
            if "amortised_s" in row:
                row["predicted_ratio"] = (t_plain + row["amortised_s"]) / t_plain
    return out


def _resnet_parts(run: dict, x: torch.Tensor, y: torch.Tensor, device: str) -> dict:
    model, w = run["model"], run["w"]

    def forward(collect: bool) -> None:
        w._collect = collect  # the statistics hooks run only in training forward passes
        model(x)
        if collect:
            w._commit()

    def refresh() -> None:
        w._refresh_groups([g for g in w.groups if g.ready])

    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()

    def transform() -> None:
        with torch.no_grad():
            w._transform_all()

    t_on = _timed(lambda: forward(True), 2, device)
    t_off = _timed(lambda: forward(False), 2, device)
    parts = {
        "stats_s": max(t_on - t_off, 0.0),
        "refresh_s": _timed(refresh, 2, device),
        "transform_s": _timed(transform, 3, device),
    }
    parts["amortised_s"] = (
        parts["stats_s"] / w.stats_every
        + parts["refresh_s"] / w.inverse_every
        + parts["transform_s"]
    )
    model.zero_grad(set_to_none=True)
    return parts


def bench_ops(methods: list[str], batch: int) -> dict:
    """Compute operators per step and host synchronisations, ResNet-20 at ``batch``: the table
    of docs/whitening.md, counted by ``brisk.whitening.audit`` (CPU profiler, leaf ``aten``
    compute ops, views and allocations excluded; ``_foreach_*`` once) over one cycle of the
    shipped cadence."""
    out: dict = {"batch": batch, "methods": {}}
    period = 1
    made = {}
    for name in methods:
        whitening, cfg = _whitening(name)
        for key in ("stats_every", "inverse_every"):
            if key in cfg:
                period = math.lcm(period, int(cfg[key]))
        made[name] = whitening
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(10, (batch,), generator=g)
    for name, whitening in made.items():
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=10)
        whitening.attach(model)
        out["methods"][name] = audit_cycle(model, whitening, (x, y), period)
        print(json.dumps({name: out["methods"][name]}), flush=True)
    out["period"] = period
    plain = out["methods"].get("none", {}).get("ops_per_step")
    for row in out["methods"].values():
        if plain is not None and row["layers"]:
            row["added_per_layer"] = (row["ops_per_step"] - plain) / row["layers"]
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
    p.add_argument(
        "--sections", nargs="+", default=["ops", "transform", "refresh", "step", "resnet50"]
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda (refresh and resnet50 sections)")
    p.add_argument("--dims", nargs="+", type=int, default=[144, 288, 576, 1152, 2304, 4608])
    p.add_argument("--resnet-rounds", type=int, default=3)
    p.add_argument("--resnet-batch", type=int, default=32)
    p.add_argument("--resnet-image", type=int, default=224)
    p.add_argument("--resnet-max-block", type=int, default=None, help="default: the shipped one")
    p.add_argument("--methods", nargs="+", default=["none", "evd", "recursive"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps-per-round", type=int, default=None, help="default: lcm of the periods")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    results: dict = {"threads": args.threads, "torch": torch.__version__}

    if "ops" in args.sections:
        results["ops"] = bench_ops(args.methods, 8 if args.quick else 128)
        ops = results["ops"]
        print(
            f"\n## 0. operators per step, ResNet-20, batch {ops['batch']}, amortised over "
            f"{ops['period']} steps (CPU profiler; syncs over the whole cycle)\n"
        )
        rows = [{"method": k, **v} for k, v in ops["methods"].items()]
        keys = ["method", "layers", "ops_per_step", "added_per_layer", "ops_refresh_step", "syncs"]
        print(_table(rows, keys))
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
    if "refresh" in args.sections:
        dims = [144, 576] if args.quick else args.dims
        results["refresh"] = bench_refresh(dims, repeats, args.device)
        keys = ["M", "statistics_s", "decomposition_s", "transform_s"]
        keys += ["logging_s", "per_step_s"]
        for method in REFRESH_METHODS:
            print(
                f"\n## 2. refresh cost on {args.device}: {method} (seconds; per_step_s amortised)\n"
            )
            print(_table([r for r in results["refresh"] if r["method"] == method], keys))
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
    if "resnet50" in args.sections:
        res = bench_resnet50(
            ["none", "evd", "recursive"],
            0 if args.quick else args.resnet_rounds,
            4 if args.quick else args.resnet_batch,
            64 if args.quick else args.resnet_image,
            args.device,
            args.threads,
            args.resnet_max_block,
        )
        results["resnet50"] = res
        print(
            f"\n## 4. ResNet-50 step on {res['device']}, batch {res['batch']}, "
            f"{res['image']}x{res['image']}, {res['rounds']} rounds of {res['steps_per_round']}\n"
        )
        rows = [{"method": k, **v} for k, v in res["methods"].items()]
        keys = ["method", "step_s", "ratio", "median_round_ratio", "predicted_ratio"]
        keys += ["stats_s", "refresh_s", "transform_s", "amortised_s", "layers", "max_M"]
        keys += ["max_block", "skipped"]
        print(_table(rows, keys))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
