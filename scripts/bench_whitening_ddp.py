"""Refresh wall time on 1 rank against N data-parallel ranks, on ResNet-50's layers.

Every whitened layer of torchvision's ResNet-50 (53 convolutions and the fc; the three M = 4608
convolutions as two blocks of 2304) gets a random covariance of its real size, and one refresh of
every layer is timed: on one process, and on ``--world`` processes that split the covariance
groups (one batched refresh each) by the cost-balanced assignment and broadcast the results.  The
runs are started from this one script one after the other, so the ratio compares like with like;
absolute times depend on the machine.

    python scripts/bench_whitening_ddp.py --algorithm evd --world 2 --threads 1
    python scripts/bench_whitening_ddp.py --device cuda --world 2     # NCCL, one GPU per rank
    python scripts/bench_whitening_ddp.py --max-m 1152 --quick        # a small smoke run

Printed: wall seconds per refresh (between barriers, minimum over ``--repeats``), the CPU seconds
of the busiest rank (what the refresh costs on the critical path, robust to other jobs on a
shared machine), the speed-ups, and the largest rank's share of the summed ``groups * M^3`` cost.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from brisk.whitening import EVDWhitening, RecursiveWhitening
from brisk.whitening.distributed import assign_by_cost, slab_runs

ALGORITHMS = {"evd": EVDWhitening, "recursive": RecursiveWhitening}


def _whitening(args: argparse.Namespace, device: torch.device):
    """ResNet-50 with the chosen algorithm attached and every covariance filled at random."""
    import torchvision

    model = torchvision.models.resnet50().to(device)
    kwargs = {"inverse_every": 1, "stats_every": 1, "condition_every": 0}
    if args.algorithm == "evd":
        kwargs = {"inverse_every": 1, "stats_every": 1, "decomposition_dtype": args.dtype}
    w = ALGORITHMS[args.algorithm](model, max_dim=args.max_m, **kwargs)
    g = torch.Generator(device="cpu").manual_seed(0)
    for layer in w.layers:  # 2M random rows per covariance, folded once (identical on all ranks)
        groups, m = layer.adapter.groups, layer.adapter.dim
        layer.stats.accumulate(torch.randn(2 * m, groups, m, generator=g).to(device))
    for group in w.groups:
        group.fold()
    w._folded = True
    return w


def _time_refresh(args: argparse.Namespace, device: torch.device) -> tuple[float, float, int]:
    """Wall seconds between barriers, and the CPU seconds of the busiest rank (minimum of each).

    On a machine shared with other jobs the wall time also measures the others; the process CPU
    time of the slowest rank is what the refresh costs on the critical path.
    """
    w = _whitening(args, device)
    best, best_cpu = float("inf"), float("inf")
    for step in range(args.repeats + 1):  # the first refresh warms up
        if dist.is_initialized():
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        w.precondition(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cpu = torch.tensor([time.process_time() - c0], dtype=torch.float64)
        if dist.is_initialized():
            dist.barrier()
        wall = time.perf_counter() - t0
        if dist.is_initialized() and device.type == "cpu":
            dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
        if step:
            best, best_cpu = min(best, wall), min(best_cpu, float(cpu))
    return best, best_cpu, len(w.layers)


def _worker(rank: int, world: int, args: argparse.Namespace, init: str, out: str) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    backend = "gloo"
    if args.device == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    if world > 1:
        dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        seconds, cpu, layers = _time_refresh(args, device)
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": seconds, "cpu": cpu, "layers": layers}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _run(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        init, out = os.path.join(tmp, "init"), os.path.join(tmp, "out.json")
        mp.spawn(_worker, args=(world, args, init, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=list(ALGORITHMS), default="evd")
    parser.add_argument(
        "--world", type=int, nargs="+", default=[2], help="rank counts to compare with one"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float64",
        help="evd's decomposition_dtype",
    )
    parser.add_argument(
        "--max-m",
        type=int,
        default=None,
        help="leave out layers with a larger M (a faster, smaller run)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1

    one = _run(1, args)
    import torchvision

    # the same groups for either algorithm: one batched refresh per covariance size
    groups = EVDWhitening(torchvision.models.resnet50(), max_dim=args.max_m).groups
    result: dict = {
        "algorithm": args.algorithm,
        "layers": one["layers"],
        "threads_per_rank": args.threads,
        "device": args.device,
        "decomposition_dtype": args.dtype,
        "seconds": {"1": one["seconds"]},
        "cpu_seconds_slowest_rank": {"1": one["cpu"]},
    }
    print(f"ResNet-50, {one['layers']} layers, {args.algorithm}, {args.threads} thread(s) per rank")
    print(
        "| ranks | wall s per refresh of every layer | speed-up | CPU s, slowest rank "
        "| CPU speed-up | largest cost share of a rank |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| 1 | {one['seconds']:.3f} | 1.00 | {one['cpu']:.3f} | 1.00 | 1.000 |")
    for world in args.world:
        many = _run(world, args)
        # the runner's assignment: each group cut into at most `world` runs of slabs
        parts = [(g, run) for g in groups for run in slab_runs(g.size, world)]
        part_costs = [float((run.stop - run.start) * g.dim**3) for g, run in parts]
        owners = assign_by_cost(part_costs, world)
        shares = [sum(c for c, o in zip(part_costs, owners) if o == r) for r in range(world)]
        top = max(shares) / sum(part_costs)
        result["seconds"][str(world)] = many["seconds"]
        result["cpu_seconds_slowest_rank"][str(world)] = many["cpu"]
        speedup, cpu_speedup = one["seconds"] / many["seconds"], one["cpu"] / many["cpu"]
        print(
            f"| {world} | {many['seconds']:.3f} | {speedup:.2f} | {many['cpu']:.3f} "
            f"| {cpu_speedup:.2f} | {top:.3f} |",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
