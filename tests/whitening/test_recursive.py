"""The recursive algorithm lowers kappa(T R T^T) monotonically at O(M^2) per step, and stays finite."""

from __future__ import annotations

import torch
from tests.whitening.helpers import batches, clone, linear_net, train
from torch import nn

from brisk.whitening import RecursiveWhitening
from brisk.whitening.recursive import equalise_top_eigenvalue


def _spd(m: int, kappa: float, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(m)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), m, dtype=torch.float64)
    if rank is not None:
        lam[rank:] = 0
    return (u * lam) @ u.T


def _kappa(r: torch.Tensor) -> float:
    e = torch.linalg.eigvalsh(r)
    return (e[-1] / e[0]).item()


def test_condition_number_falls_monotonically_towards_one() -> None:
    r = _spd(24, 1e4)
    rt, t, q = r.clone()[None], torch.eye(24, dtype=torch.float64)[None], torch.eye(24)[None]
    q = q.double()
    kappas = [_kappa(rt[0])]
    for _ in range(600):
        equalise_top_eigenvalue(rt, t, q, power_iters=40)
        kappas.append(_kappa(rt[0]))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(kappas, kappas[1:]))
    assert kappas[8] < kappas[0] / 10
    assert kappas[-1] < 2.0
    # the state identities hold to round-off
    torch.testing.assert_close(t[0] @ r @ t[0].T, rt[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(t[0].T @ t[0], q[0], rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(q[0]).min() > 0


def test_rank_deficient_covariance_stays_finite_and_is_equalised_with_damping() -> None:
    r = _spd(16, 1e3, rank=5)  # fewer samples than features
    eye = torch.eye(16, dtype=torch.float64)[None]
    rt, t, q, tt = r.clone()[None], eye.clone(), eye.clone(), eye.clone()
    damping = torch.tensor([1e-2 * r.trace().item() / 16], dtype=torch.float64)
    kappas = []
    for _ in range(300):
        equalise_top_eigenvalue(rt, t, q, power_iters=10, damping=damping, tt=tt)
        assert torch.isfinite(rt).all() and torch.isfinite(t).all() and torch.isfinite(q).all()
        kappas.append(_kappa(rt[0] + damping * tt[0]))
    # the damped whitened covariance T (R + d I) T^T is tracked exactly and tends to a multiple of I
    torch.testing.assert_close(tt[0], t[0] @ t[0].T)
    torch.testing.assert_close(rt[0], t[0] @ r @ t[0].T)
    assert kappas[-1] < 1.5 < _kappa(r + damping * eye[0]) / 10
    # without damping the same steps shrink every direction towards zero: the reason for damping
    plain = r.clone()[None]
    for _ in range(300):
        equalise_top_eigenvalue(plain, eye.clone(), eye.clone(), power_iters=10)
    assert torch.linalg.eigvalsh(plain[0])[-1] < 1e-3 * torch.linalg.eigvalsh(rt[0])[-1]


def test_zero_covariance_is_left_alone() -> None:
    rt = torch.zeros(2, 4, 4)
    t, q = torch.eye(4).expand(2, 4, 4).clone(), torch.eye(4).expand(2, 4, 4).clone()
    equalise_top_eigenvalue(rt, t, q, power_iters=3)
    torch.testing.assert_close(t, torch.eye(4).expand(2, 4, 4))


def test_small_batch_training_stays_finite_and_logs_conditioning() -> None:
    """Batch 4 < M = 9 on the second layer: every covariance is singular."""
    model = linear_net()
    w = RecursiveWhitening(steps=3, inverse_every=2, condition_every=1, stats_every=1, eps=1e-3)
    w.attach(model)
    data = batches((7,), 4, batch=4)
    losses, _ = train(model, w, data, 12)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    m = w.metrics()
    assert m["whiten/kappa_white/2"] < m["whiten/kappa_R/2"]
    assert m["whiten/fallbacks"] == 0


def test_recursive_approaches_evd_as_steps_grow() -> None:
    """With many rank-1 steps per update Q tends to a multiple of R^-1 (exact whitening)."""
    model = nn.Linear(6, 2).double()
    data = batches((6,), 2, n=1, batch=200)
    errs = []
    for steps in (1, 200):
        w = RecursiveWhitening(steps=steps, power_iters=50, normalize=False, eps=1e-3)
        m = clone(model)
        w.attach(m)
        train(m, w, data, 1)
        layer = w.layers[0]
        rt = layer.stats.cov[0]
        e = torch.linalg.eigvalsh(rt)
        errs.append((e[-1] / e[0]).item())
    assert errs[1] < errs[0] and errs[1] < 1.01


def test_float64_statistics_drive_a_float32_model_like_a_float64_one() -> None:
    """``stats_dtype: float64``: statistics and T in double, the model and its gradients in float."""
    reference = linear_net()  # float64 throughout
    model = clone(reference).float()
    data = batches((7,), 4)
    data32 = [(x.float(), y) for x, y in data]
    w_ref = RecursiveWhitening(steps=3, inverse_every=2)
    w64 = RecursiveWhitening(steps=3, inverse_every=2, stats_dtype="float64")
    w_ref.attach(reference)
    w64.attach(model)
    ref_losses, _ = train(reference, w_ref, data, 12)
    losses, _ = train(model, w64, data32, 12)
    assert all(layer.stats.cov.dtype == torch.float64 for layer in w64.layers)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=0, atol=1e-4)
