"""The recursive algorithm: warm-started Newton-Schulz steps on the damped, trace-normalised
covariance lower kappa(Q A) at every step, stay finite on singular and zero covariances, tend to
evd's exact damped whitening, and follow a change of R without a decomposition."""

from __future__ import annotations

import pytest
import torch
from tests.whitening.helpers import batches, clone, linear_net, train
from torch import nn

from brisk.whitening import EVDWhitening, RecursiveWhitening
from brisk.whitening.recursive import newton_schulz, normalised


def _spd(m: int, kappa: float, rank: int | None = None, seed: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(m if seed is None else seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), m, dtype=torch.float64)
    if rank is not None:
        lam[rank:] = 0
    return (u * lam) @ u.T


def _kappa_through(q: torch.Tensor, a: torch.Tensor) -> float:
    """kappa(Q A): the spectrum of A seen through the preconditioner Q."""
    root = torch.linalg.cholesky(q.double())
    e = torch.linalg.eigvalsh(root.T @ a.double() @ root)
    return (e[-1] / e[0]).item()


def test_steps_equalise_the_spectrum_from_the_identity() -> None:
    r = _spd(24, 1e4)[None]
    a, _ = normalised(r, torch.zeros(1, dtype=torch.float64))
    q = torch.eye(24, dtype=torch.float64)[None]
    kappas = [_kappa_through(q[0], a[0])]
    for _ in range(30):  # one step per refresh; from the identity about log2(kappa) are needed
        q = newton_schulz(a, q, steps=1)
        kappas.append(_kappa_through(q[0], a[0]))
    assert all(b < a for a, b in zip(kappas, kappas[1:]) if a > 1.001)
    assert kappas[-1] < 1.05 and kappas[5] > 2.0
    assert torch.equal(q, q.transpose(-1, -2))  # exactly symmetric: stored as a triangle


def test_rank_deficient_covariance_stays_finite_and_is_equalised_with_damping() -> None:
    r = _spd(16, 1e3, rank=5)[None]  # fewer samples than features
    damping = torch.tensor([1e-2 * r[0].trace().item() / 16], dtype=torch.float64)
    a, _ = normalised(r, damping)
    q = torch.eye(16, dtype=torch.float64)[None]
    for _ in range(30):
        q = newton_schulz(a, q, steps=1)
        assert torch.isfinite(q).all()
    eye = torch.eye(16, dtype=torch.float64)
    assert _kappa_through(q[0], a[0]) < 1.01 < _kappa_through(eye, a[0]) / 10
    # the preconditioner is the normalised inverse: the mean eigenvalue of Q A is 1
    torch.testing.assert_close((q[0] @ a[0]).trace() / 16, torch.tensor(1.0, dtype=torch.float64))


def test_zero_covariance_gives_the_identity() -> None:
    cov = torch.zeros(2, 4, 4)
    a, _ = normalised(cov, torch.full((2,), torch.finfo(torch.float32).tiny))
    q = newton_schulz(a, torch.eye(4).expand(2, 4, 4).clone(), 2)
    torch.testing.assert_close(q, torch.eye(4).expand(2, 4, 4))


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
        RecursiveWhitening(steps=40, eps=0.1, normalize=normalize),
        EVDWhitening(eps=0.1, normalize=normalize),
    ):
        model = nn.Linear(6, 2).double()
        w.attach(model)
        train(model, w, data, 1)
        qs.append(w.layers[0].state.q)
    torch.testing.assert_close(qs[0], qs[1], rtol=1e-6, atol=1e-9)


def test_float64_statistics_drive_a_float32_model_like_a_float64_one() -> None:
    """``stats_dtype: float64``: statistics and Q in double, the model and gradients in float."""
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


def test_the_first_refresh_whitens_as_evd_does_with_the_default_steps() -> None:
    """From the identity, a group's first refresh runs enough steps to land on evd's inverse: two
    steps per refresh would leave a 256-input layer of condition number 1e4 under-whitened for
    dozens of refreshes (the row-sum bound scaled Q down at each one)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.linalg.cholesky(_spd(256, 1e4, seed=1)).float()
    data = [(torch.randn(512, 256, generator=g) @ mix.T, torch.randint(2, (512,), generator=g))]
    qs = []
    for w in (RecursiveWhitening(), EVDWhitening()):
        model = nn.Linear(256, 2)
        w.attach(model)
        train(model, w, data, 1)
        qs.append(w.layers[0].state.q)
    assert w.layers[0].refreshes == 1
    assert (qs[0] - qs[1]).norm() <= 0.05 * qs[1].norm()
