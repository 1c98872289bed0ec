"""No training step waits for the device: a whole cadence cycle runs under a sync detector.

The detector records operators, not time (``brisk.whitening.audit``), so this runs on the CPU:
an ``.item()``, a ``bool(tensor)``, a data-dependent shape or an info-checked factorisation is the
same operator on every device.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from brisk.whitening import EVDWhitening, RecursiveWhitening
from brisk.whitening.audit import SyncDetector
from brisk.whitening.covariance import CovarianceGroup


def _model() -> nn.Module:
    """Every adapter kind on the step's path: convolutions (grouped, blocked), a biased Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),  # M = 72 > max_block: 2 blocks of 36
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )


def _cycle(whitening, steps: int, start: int = 0) -> None:
    model = whitening._model
    opt = whitening._opt
    g = torch.Generator().manual_seed(start)
    for step in range(start, start + steps):
        x, y = torch.randn(16, 3, 6, 6, generator=g), torch.randint(10, (16,), generator=g)
        whitening.begin_step(step)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        whitening.precondition(step)
        opt.step()


def _attached(algorithm):
    model = _model()
    w = algorithm(model, max_block=40, stats_max_rows=64, stats_every=2, inverse_every=4)
    w._model = model
    w._opt = torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": 5e-4},
            {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    return w


@pytest.mark.parametrize("algorithm", [EVDWhitening, RecursiveWhitening])
def test_a_whole_cadence_cycle_makes_no_host_synchronisation(algorithm) -> None:
    """From the first step (first statistics, first refresh) through two full cycles of plain,
    statistics and refresh steps, the runner's order of hooks, SGD with weight decay."""
    w = _attached(algorithm)
    period = math.lcm(w.stats_every, w.inverse_every)
    with SyncDetector() as syncs:
        _cycle(w, 2 * period + 1)
    assert syncs.events == {}, syncs.events
    assert min(layer.adapter.blocks for layer in w.layers) == 1
    assert max(layer.adapter.blocks for layer in w.layers) > 1
    # whitening did run: every layer was refreshed from accepted statistics
    assert all(int(layer.stats.updates) > 0 and layer.refreshes > 0 for layer in w.layers)
    for layer in w.layers:
        assert not torch.equal(layer.state.q, torch.eye(layer.adapter.dim).expand_as(layer.state.q))


def test_the_detector_sees_the_usual_synchronisations() -> None:
    t = torch.randn(4, 4)
    spd = t @ t.T + torch.eye(4)
    with SyncDetector() as syncs:
        t.sum().item()
        bool((t > 0).any())
        float(t[0, 0])
        torch.nonzero(t > 0)
        torch.linalg.cholesky(spd)
        torch.linalg.cholesky_ex(spd)  # info stays a tensor: no wait
        torch.linalg.solve_triangular(torch.linalg.cholesky_ex(spd)[0], t, upper=False)
    assert syncs.events["_local_scalar_dense"] == 3
    assert syncs.events["nonzero"] == 1
    assert syncs.events["linalg_cholesky_ex"] == 0
    assert syncs.total >= 5  # linalg.cholesky's host check included


def test_an_added_item_in_the_step_is_caught(monkeypatch) -> None:
    """The cycle test fails when someone reads a value on the host inside the step."""
    fold = CovarianceGroup.fold

    def reading_fold(self) -> None:
        fold(self)
        if int(self.buffers["updates"].min()) < 0:  # a "harmless" check
            raise AssertionError

    monkeypatch.setattr(CovarianceGroup, "fold", reading_fold)
    w = _attached(EVDWhitening)
    with SyncDetector() as syncs:
        _cycle(w, 5)
    assert syncs.events["_local_scalar_dense"] >= 1
