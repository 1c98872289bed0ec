"""Two gloo processes precondition exactly as one process on the same global batch.

Refreshes are spread over the ranks (each run of a group's slabs refreshed on one rank, then
broadcast), and ``DDP.no_sync`` gradient accumulation with the plain ``step()`` API gives the same
result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.whitening.helpers import batches, grouped_conv_net
from torch import nn

from brisk.whitening import EVDWhitening, RecursiveWhitening

STEPS = 3
ALGORITHMS = {"evd": EVDWhitening, "recursive": RecursiveWhitening}


def _run(name: str, data, rank: int, world: int) -> dict:
    """Train STEPS steps on this rank's share of each global batch; return grads and weights."""
    model = grouped_conv_net()
    w = ALGORITHMS[name](inverse_every=2, eps=0.05, stats_every=1)
    w.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    grads = []
    for step in range(STEPS):
        x, y = data[step]
        share = len(x) // world
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        w.begin_step(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if world > 1:  # what DDP does before backward() returns
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        w.precondition(step)
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return {"grads": grads, "params": [p.detach().clone() for p in model.parameters()]}


def _run_ddp_no_sync(name: str, data, rank: int, world: int) -> dict:
    """DDP, two micro-batches per step (the first under ``no_sync``), ``whitening.step()``."""
    model = grouped_conv_net()
    w = ALGORITHMS[name](model, inverse_every=2, eps=0.05, stats_every=1)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    grads = []
    for step in range(STEPS):
        x, y = data[step]
        share = len(x) // world
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        half = share // 2
        opt.zero_grad()
        with ddp.no_sync():
            (nn.functional.cross_entropy(ddp(x[:half]), y[:half]) / 2).backward()
        (nn.functional.cross_entropy(ddp(x[half:]), y[half:]) / 2).backward()
        w.step()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return {"grads": grads, "params": [p.detach().clone() for p in model.parameters()]}


def _worker(rank: int, world: int, name: str, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = batches((4, 9, 9), 5, n=STEPS, batch=16)
        torch.save(_run(name, data, rank, world), Path(out_dir) / f"rank{rank}.pt")
        torch.save(_run_ddp_no_sync(name, data, rank, world), Path(out_dir) / f"ddp{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_two_gloo_ranks_match_a_single_process(tmp_path: Path, name: str) -> None:
    mp.spawn(_worker, args=(2, name, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = _run(name, batches((4, 9, 9), 5, n=STEPS, batch=16), rank=0, world=1)
    for rank, prefix in ((0, "rank"), (1, "rank"), (0, "ddp"), (1, "ddp")):
        got = torch.load(tmp_path / f"{prefix}{rank}.pt", weights_only=True)
        for step in range(STEPS):
            for a, b in zip(got["grads"][step], single["grads"][step]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for a, b in zip(got["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_a_dominant_group_is_split_over_the_ranks() -> None:
    """A group of equal-size blocks that holds most of the refresh cost is cut into runs of slabs,
    so two ranks share it instead of one rank carrying it alone."""
    from brisk.whitening.distributed import assign_by_cost, slab_runs

    assert slab_runs(5, 2) == [slice(0, 2), slice(2, 5)]
    assert slab_runs(1, 4) == [slice(0, 1)]
    groups = {2304: 6, 576: 3, 64: 1}  # M: slabs, the largest group 94 % of the cost
    parts = [(m, run) for m, n in groups.items() for run in slab_runs(n, 2)]
    costs = [(run.stop - run.start) * m**3 for m, run in parts]
    owners = assign_by_cost(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners) if o == rank) for rank in (0, 1)]
    assert max(loads) / sum(costs) < 0.55
