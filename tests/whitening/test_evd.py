"""``evd``'s inverse from a Cholesky factor (float64 retry), and the ``spectrum: clip`` ablation."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from tests.whitening.helpers import batches, train
from torch import nn

import brisk.config  # noqa: F401  (registers the config schemas)
from brisk.errors import UserError
from brisk.whitening import EVDWhitening
from brisk.whitening.evd import inverse_from_eigh
from brisk.whitening.linalg import damped_cholesky


def _fitted(**kw) -> tuple[EVDWhitening, torch.Tensor]:
    """One refresh on a Linear(6, 2); returns the whitening and the damped covariance it saw."""
    model = nn.Linear(6, 2).double()
    w = EVDWhitening(model, eps=0.1, inverse_every=1, **kw)
    train(model, w, batches((6,), 2, n=1, batch=200), 1)
    layer = w.layers[0]
    damped = layer.stats.cov[0] + w.damping(layer)[0] * torch.eye(6, dtype=torch.float64)
    return w, damped


@pytest.mark.parametrize("normalize", [True, False])
def test_cholesky_inverse_is_the_eigh_inverse(normalize: bool) -> None:
    w, damped = _fitted(normalize=normalize)
    evals, evecs = torch.linalg.eigh(damped)
    expected = inverse_from_eigh(evals, evecs, normalize)
    torch.testing.assert_close(w.layers[0].state.q[0], expected, rtol=1e-10, atol=1e-12)
    assert w.layers[0].kappa_r is None  # no eigenvalues unless they are logged


def test_float32_factorisation_failure_is_retried_in_float64(monkeypatch) -> None:
    real = torch.linalg.cholesky_ex

    def fails_in_float32(a, *args, **kwargs):
        if a.dtype == torch.float32:
            return torch.full_like(a, float("nan")), torch.ones(a.shape[:-2], dtype=torch.int32)
        return real(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", fails_in_float32)
    cov = torch.eye(3)[None] * 2
    factor = damped_cholesky(cov, torch.ones(1))
    assert factor is not None and factor.dtype == torch.float64
    torch.testing.assert_close(factor[0], torch.eye(3, dtype=torch.float64) * 3**0.5)


def test_clip_only_shrinks_the_directions_above_the_mean() -> None:
    w, damped = _fitted(spectrum="clip", normalize=False)
    q = w.layers[0].state.q[0]
    evals = torch.linalg.eigvalsh(damped)
    # Q (R + eps I) has the spectrum min(l, mean l): the top is clipped, the rest untouched
    clipped = torch.linalg.eigvals(q @ damped).real.sort().values
    torch.testing.assert_close(clipped, evals.clamp(max=evals.mean().item()), rtol=1e-8, atol=0)
    assert (evals > evals.mean()).sum() >= 1 and (evals < evals.mean()).sum() >= 1
    normalised, damped = _fitted(spectrum="clip")
    q = normalised.layers[0].state.q[0]
    torch.testing.assert_close((q @ damped).trace(), damped.trace())


def test_spectrum_is_a_config_key_and_is_checked() -> None:
    with initialize_config_module(config_module="brisk.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["whitening=evd", "whitening.spectrum=clip"])
    assert instantiate(cfg.whitening).spectrum == "clip"
    with pytest.raises(UserError, match="whitening.spectrum"):
        EVDWhitening(spectrum="sqrt")
