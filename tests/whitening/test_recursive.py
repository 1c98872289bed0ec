"""The recursive algorithm: block equalisation lowers kappa(T R T^T), keeps its scale over any
number of updates, follows a change of R, and tends to evd's exact damped whitening."""

from __future__ import annotations

import pytest
import torch
from tests.whitening.helpers import batches, clone, linear_net, train
from torch import nn

from brisk.whitening import EVDWhitening, RecursiveWhitening
from brisk.whitening.recursive import block_size, equalise_block, rescale


def _spd(m: int, kappa: float, rank: int | None = None, seed: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(m if seed is None else seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), m, dtype=torch.float64)
    if rank is not None:
        lam[rank:] = 0
    return (u * lam) @ u.T


def _kappa(r: torch.Tensor) -> float:
    e = torch.linalg.eigvalsh(r)
    return (e[-1] / e[0]).item()


def _state(m: int, dtype=torch.float64):
    eye = torch.eye(m, dtype=dtype)[None]
    return eye.clone(), eye.clone(), eye.clone()  # T, Q, T T^T


def test_block_steps_equalise_the_spectrum_and_keep_the_state_identities() -> None:
    r = _spd(24, 1e4)
    rt = r.clone()[None]
    t, q, tt = _state(24)
    damping = torch.zeros(1, dtype=torch.float64)
    kappas = [_kappa(rt[0])]
    for _ in range(12):  # 5 directions at each end per step
        equalise_block(rt, t, q, tt, damping, k=block_size(24), iters=3)
        kappas.append(_kappa(rt[0]))
    assert all(b < a for a, b in zip(kappas, kappas[1:]))
    assert kappas[1] < kappas[0] / 5 and kappas[6] < 2.0 and kappas[-1] < 1.05
    torch.testing.assert_close(t[0] @ r @ t[0].T, rt[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(t[0].T @ t[0], q[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(t[0] @ t[0].T, tt[0], rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(q[0]).min() > 0


def test_rank_deficient_covariance_stays_finite_and_is_equalised_with_damping() -> None:
    r = _spd(16, 1e3, rank=5)  # fewer samples than features
    rt = r.clone()[None]
    t, q, tt = _state(16)
    damping = torch.tensor([1e-2 * r.trace().item() / 16], dtype=torch.float64)
    target = (r.trace() + 16 * damping).reshape(1)
    for _ in range(30):
        equalise_block(rt, t, q, tt, damping, k=4, iters=3)
        rescale(rt, t, q, tt, damping, target)
        assert torch.isfinite(rt).all() and torch.isfinite(t).all() and torch.isfinite(q).all()
    # the damped whitened covariance T (R + d I) T^T is tracked exactly and tends to a multiple of I
    eye = torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(tt[0], t[0] @ t[0].T)
    torch.testing.assert_close(rt[0], t[0] @ r @ t[0].T)
    a = rt[0] + damping * tt[0]
    assert _kappa(a) < 1.5 < _kappa(r + damping * eye) / 10
    torch.testing.assert_close(a.trace(), target[0])  # the scale is kept


def test_zero_covariance_is_left_alone() -> None:
    rt = torch.zeros(2, 4, 4)
    t, q, tt = (torch.eye(4).expand(2, 4, 4).clone() for _ in range(3))
    equalise_block(rt, t, q, tt, torch.zeros(2), k=2, iters=3)
    torch.testing.assert_close(t, torch.eye(4).expand(2, 4, 4))


def test_small_batch_training_stays_finite_and_logs_conditioning() -> None:
    """Batch 4 < M = 9 on the second layer: every covariance is singular."""
    model = linear_net()
    w = RecursiveWhitening(steps=3, inverse_every=2, condition_every=1, stats_every=1)
    w.attach(model)
    data = batches((7,), 4, batch=4)
    losses, _ = train(model, w, data, 12)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    m = w.metrics()
    assert m["whiten/kappa_white/2"] < m["whiten/kappa_R/2"]
    assert m["whiten/fallbacks"] == 0
    assert m["whiten/seconds_logging"] > 0


def test_condition_numbers_are_not_computed_by_default() -> None:
    model = linear_net()
    w = RecursiveWhitening(inverse_every=1, stats_every=1)
    w.attach(model)
    train(model, w, batches((7,), 4), 4)
    assert all(layer.kappa_r is None for layer in w.layers)
    assert w.metrics()["whiten/seconds_logging"] == 0


@pytest.mark.parametrize("normalize", [True, False])
def test_many_steps_reach_evds_exact_damped_inverse(normalize: bool) -> None:
    """The limit of the updates is evd's preconditioner, normalisation included."""
    data = batches((6,), 2, n=1, batch=200)
    qs = []
    for w in (
        RecursiveWhitening(steps=40, power_iters=4, eps=0.1, normalize=normalize),
        EVDWhitening(eps=0.1, normalize=normalize),
    ):
        model = nn.Linear(6, 2).double()
        w.attach(model)
        train(model, w, data, 1)
        qs.append(w.layers[0].state.q)
    torch.testing.assert_close(qs[0], qs[1], rtol=1e-6, atol=1e-9)


def test_float64_statistics_drive_a_float32_model_like_a_float64_one() -> None:
    """``stats_dtype: float64``: statistics and T in double, the model and gradients in float."""
    reference = linear_net()  # float64 throughout
    model = clone(reference).float()
    data = batches((7,), 4)
    data32 = [(x.float(), y) for x, y in data]
    w_ref = RecursiveWhitening(steps=3, inverse_every=2, stats_every=1)
    w64 = RecursiveWhitening(steps=3, inverse_every=2, stats_every=1, stats_dtype="float64")
    w_ref.attach(reference)
    w64.attach(model)
    ref_losses, _ = train(reference, w_ref, data, 12)
    losses, _ = train(model, w64, data32, 12)
    assert all(layer.stats.cov.dtype == torch.float64 for layer in w64.layers)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=0, atol=1e-4)
