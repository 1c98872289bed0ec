"""``torch.compile(model)`` with whitening attached trains like the eager model.

The statistics hooks run inside the compiled forward pass (dynamo traces them or breaks the graph
around them); the gradient transform runs after the backward pass, outside the compiled graph.
Inductor on the CPU needs a C compiler.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.whitening.helpers import sgd
from torch import nn

from brisk.whitening import EVDWhitening, RecursiveWhitening

TOLERANCE = 1e-4  # float32 losses of eager and inductor-compiled runs, 8 steps


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )


def _losses(model: nn.Module, whitening, forward) -> list[float]:
    opt = sgd(model, 5e-4)
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(8):
        x, y = torch.randn(16, 3, 6, 6, generator=g), torch.randint(5, (16,), generator=g)
        whitening.begin_step(step)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        whitening.precondition(step)
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [EVDWhitening, RecursiveWhitening])
def test_a_compiled_model_trains_like_the_eager_one(algorithm) -> None:
    torch._dynamo.reset()
    eager_model = _net()
    compiled_model = copy.deepcopy(eager_model)
    settings = {"stats_every": 2, "inverse_every": 2, "stats_max_rows": 64}
    eager = algorithm(eager_model, **settings)
    compiled = algorithm(compiled_model, **settings)
    reference = _losses(eager_model, eager, eager_model)
    got = _losses(compiled_model, compiled, torch.compile(compiled_model, backend="inductor"))
    assert compiled.unfed_layers() == []  # the hooks ran inside the compiled forward pass
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference), rtol=0, atol=TOLERANCE)
    for a, b in zip(eager.layers, compiled.layers):
        torch.testing.assert_close(b.state.q, a.state.q, rtol=0, atol=TOLERANCE)
