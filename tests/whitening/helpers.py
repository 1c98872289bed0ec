"""Tiny models and training loops shared by the whitening tests (float64, CPU, deterministic)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from brisk.whitening import Whitening


def grouped_conv_net() -> nn.Module:
    """Conv2d with stride 2, padding, dilation 2 and groups 2 (with bias), then a Linear head."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 5),
    )
    return net.double()


def conv3d_net() -> nn.Module:
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 2), padding=1, bias=False),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 3 * 3, 3),
    )
    return net.double()


def linear_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 4)).double()


def batches(net_input: tuple[int, ...], classes: int, n: int = 6, batch: int = 16):
    """Fixed, ill-conditioned (offset, scaled) inputs so whitening changes the trajectory."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        x = torch.randn(batch, *net_input, generator=g, dtype=torch.float64)
        x = 3.0 * x + 1.5 + x[:, :1] * 2.0
        y = torch.randint(classes, (batch,), generator=g)
        out.append((x, y))
    return out


def sgd(model: nn.Module, weight_decay: float, nesterov: bool = False) -> torch.optim.SGD:
    """The runner's grouping: weights decayed, biases and norm parameters not."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=0.02,
        momentum=0.9,
        nesterov=nesterov,
    )


def train(
    model: nn.Module,
    whitening: Whitening,
    data,
    steps: int,
    weight_decay: float = 1e-2,
    nesterov: bool = False,
    start: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[list[float], torch.optim.Optimizer]:
    """The trainer loop's order of hooks; returns per-step losses."""
    opt = optimizer or sgd(model, weight_decay, nesterov)
    losses = []
    for step in range(start, start + steps):
        x, y = data[step % len(data)]
        whitening.begin_step(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        whitening.precondition(step)
        opt.step()
        losses.append(loss.item())
    return losses, opt


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
