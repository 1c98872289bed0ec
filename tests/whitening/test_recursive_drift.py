"""``recursive`` over long runs: it keeps its scale on stationary noisy statistics and follows an
abrupt change of the input basis about as fast as the running average lets an exact inverse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brisk.whitening import RecursiveWhitening
from brisk.whitening.recursive import equalise_block, rescale


def _basis(m: int, seed: int, spread: float = 1e-2) -> torch.Tensor:
    """A square root of a covariance with eigenvalues spread log-uniformly over ``spread``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
    return u * torch.logspace(0, torch.log10(torch.tensor(spread)).item(), m).sqrt()


def _kappa(t: torch.Tensor, r: torch.Tensor) -> float:
    e = torch.linalg.eigvalsh((t @ r @ t.T).double())
    return (e[-1] / e[0]).item()


@pytest.mark.slow
def test_fifty_thousand_float32_updates_keep_the_scale_and_stay_finite() -> None:
    """The state, the running covariance of rows folded through T, exactly as ``_refresh`` keeps it
    (the shrink-only rank-1 version decayed by about 1e3 per 2,000 such updates)."""
    m, rows, momentum, eps = 8, 32, 0.95, 0.3
    g = torch.Generator().manual_seed(0)
    a = _basis(m, 1)
    eye = torch.eye(m)[None]
    t, q, tt = eye.clone(), eye.clone(), eye.clone()
    rt = torch.zeros(1, m, m)
    trace = torch.zeros(1)
    ratios = []
    for k in range(50_000):
        x = torch.randn(rows, m, generator=g) @ a.T
        x = x - x.mean(0)
        xt = x @ t[0].T
        b = momentum if k else 0.0
        rt.mul_(b).add_((xt.T @ xt / rows)[None], alpha=1 - b)
        trace = b * trace + (1 - b) * x.square().sum() / rows
        damping = eps * trace / m
        equalise_block(rt, t, q, tt, damping, k=2, iters=1)
        rescale(rt, t, q, tt, damping, trace + m * damping)
        if k % 1000 == 999:
            a_trace = (rt + damping * tt).diagonal(dim1=-2, dim2=-1).sum()
            ratios.append((a_trace / (trace + m * damping)).item())
            assert all(torch.isfinite(s).all() for s in (rt, t, q, tt)), k
    assert len(ratios) == 50 and all(0.5 <= r <= 2.0 for r in ratios)
    assert t.dtype == torch.float32
    # still whitening: the damped whitened covariance stays well conditioned
    r_true = a @ a.T
    damped = r_true + eps * r_true.trace() / m * torch.eye(m)
    assert _kappa(t[0], damped) < 2.0 < _kappa(torch.eye(m), damped) / 5


def _run(w: RecursiveWhitening, layer: nn.Module, bases, rows: int, g: torch.Generator):
    """Feed one statistics update per step through the public hooks; yield after each update."""
    for k, a in enumerate(bases):
        w.begin_step(k)
        layer(torch.randn(rows, a.shape[0], generator=g) @ a.T)
        w.precondition(k)
        yield k


def test_scale_is_kept_through_the_algorithm() -> None:
    m = 16
    layer = nn.Linear(m, 1)
    w = RecursiveWhitening(eps=0.3, stats_every=1, inverse_every=1)
    w.attach(layer)
    whitened = w.layers[0]
    for k in _run(w, layer, [_basis(m, 0)] * 100, 64, torch.Generator().manual_seed(0)):
        if k % 10:
            continue
        damping = w.damping(whitened)
        a = whitened.stats.cov + damping[:, None, None] * whitened.state.t_outer
        target = whitened.stats.trace + m * damping
        torch.testing.assert_close(a.diagonal(dim1=-2, dim2=-1).sum(-1), target)


CHANGE_WITHIN = 100  # updates, at momentum 0.95 (an exact inverse of the same statistics: ~80)


def test_kappa_falls_below_two_after_an_abrupt_change_of_basis() -> None:
    m, before = 16, 100
    old, new = _basis(m, 0), _basis(m, 7)
    layer = nn.Linear(m, 1)
    w = RecursiveWhitening(eps=0.01, stats_every=1, inverse_every=1)
    w.attach(layer)
    state = w.layers[0].state
    kappas = []
    bases = [old] * before + [new] * CHANGE_WITHIN
    for k in _run(w, layer, bases, 256, torch.Generator().manual_seed(0)):
        if k == before - 1:
            assert _kappa(state.t[0], old @ old.T) < 2.0
        if k >= before:
            kappas.append(_kappa(state.t[0], new @ new.T))
    assert kappas[0] > 20  # the change is abrupt: the old transform is far from whitening
    assert kappas[-1] < 2.0


def _digits(tmp_path, steps: int) -> dict:
    import json

    from tests.conftest import run_train

    run_dir = tmp_path / str(steps)
    run_train(
        "whitening=recursive",
        "whitening.stats_every=1",
        "whitening.inverse_every=1",
        f"trainer.epochs={steps // 18 + 1}",  # 18 steps per digits epoch
        f"trainer.max_steps={steps}",
        "trainer.val_every=1000",  # the test split judges the last weights; no per-epoch validation
        "trainer.log_every=100",
        "trainer.threads=1",
        f"hydra.run.dir={run_dir}",
        timeout=3000,
    )
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.slow
def test_a_long_run_with_an_update_every_step_ends_finite_and_accurate(tmp_path) -> None:
    """2,000 updates, past the ~1,700 after which the shrink-only version diverged on digits
    (loss 6.5e8 at step 2,000); 20,000 steps would take about 25 CPU-minutes for the same proof."""
    short, long = _digits(tmp_path, 500), _digits(tmp_path, 2000)
    assert long["status"] == "ok" and long["steps"] == 2000
    assert torch.isfinite(torch.tensor(long["test"]["loss"]))
    # as accurate up to 1 % of the 359-image test split: runs with other thread counts and worker
    # layouts land a few images apart (measured: 356 and 355 against 357 at 500 steps)
    assert long["test_acc1"] >= short["test_acc1"] - 0.01
