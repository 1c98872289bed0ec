"""Two gloo processes precondition exactly as one process on the same global batch."""

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
    w = ALGORITHMS[name](inverse_every=2, eps=0.05)
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


def _worker(rank: int, world: int, name: str, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = batches((4, 9, 9), 5, n=STEPS, batch=16)
        torch.save(_run(name, data, rank, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_two_gloo_ranks_match_a_single_process(tmp_path: Path, name: str) -> None:
    mp.spawn(_worker, args=(2, name, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = _run(name, batches((4, 9, 9), 5, n=STEPS, batch=16), rank=0, world=1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for step in range(STEPS):
            for a, b in zip(got["grads"][step], single["grads"][step]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for a, b in zip(got["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
