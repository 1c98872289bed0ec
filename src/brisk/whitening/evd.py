"""``whitening=evd``: exact whitening by a gradient transform (arXiv 2010.01546, contribution 1).

Feature whitening trains ``W~`` on whitened inputs ``P (x - mu)`` with ``P^T P = (R + eps I)^-1``.
Mapped back to the ordinary weights ``W = W~ P`` one SGD step on ``W~`` is one step on ``W`` with
the gradient right-multiplied by ``(R + eps I)^-1``; so the forward and backward passes stay
untouched and each weight gradient is transformed once per batch (``S M^2`` work instead of the
``2 N M^2`` of transforming every sample).

The inverse is the cheapest exact one: a Cholesky factor of ``R + eps I`` in the statistics' dtype
(retried in float64 when it fails) and ``cholesky_inverse``, about a tenth of a float64
eigen-decomposition's time.  Eigenvalues are computed only for the condition-number logs, on every
``condition_every``-th refresh (0, the default, never).

``spectrum: clip`` is an ablation, not whitening: ``Q = U min(1, l_ref / l) U^T`` from an
eigen-decomposition (``l_ref`` the mean eigenvalue of ``R + eps I``) only shrinks the directions
above the mean and leaves the rest alone, roughly where a shrink-only recursive update ends after a
few refreshes.  It separates the gain of whitening from that of taming the dominant directions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brisk.whitening.gradient import GradientWhitening, gradient_state
from brisk.whitening.layers import WhitenedLayer
from brisk.whitening.linalg import condition_number, damped_cholesky, inverse_from_cholesky
from brisk.whitening.settings import EVDSettings

__all__ = ["EVDWhitening", "clipped_from_eigh", "inverse_from_eigh"]


def inverse_from_eigh(evals: Tensor, evecs: Tensor, normalize: bool) -> Tensor:
    """``c (R + eps I)^-1`` with ``c`` the mean eigenvalue when normalising, else 1.

    Normalising keeps ``trace(Q (R + eps I)) = trace(R + eps I)``: the whitened inputs keep the
    raw inputs' average variance, so a learning rate tuned for SGD stays in the right range.
    """
    scale = evals.mean(-1, keepdim=True) if normalize else torch.ones_like(evals[..., :1])
    return (evecs * (scale / evals).unsqueeze(-2)) @ evecs.transpose(-1, -2)


def clipped_from_eigh(evals: Tensor, evecs: Tensor, normalize: bool) -> Tensor:
    """``c U min(1, l_ref / l) U^T``: only the eigenvalues above the mean ``l_ref`` are shrunk.

    ``Q (R + eps I)`` then has the spectrum ``min(l, l_ref)``; normalising (``c`` chosen so that
    ``trace(Q (R + eps I)) = trace(R + eps I)``, as for the inverse) keeps SGD's step scale.
    """
    ref = evals.mean(-1, keepdim=True)
    gain = torch.clamp(ref / evals, max=1.0)
    scale = torch.ones_like(ref)
    if normalize:
        scale = evals.sum(-1, keepdim=True) / (gain * evals).sum(-1, keepdim=True)
    return (evecs * (scale * gain).unsqueeze(-2)) @ evecs.transpose(-1, -2)


class EVDWhitening(GradientWhitening):
    """Gradient-transform whitening with an exact damped inverse of the input covariance."""

    name = "evd"

    settings_type = EVDSettings
    spectrum: str
    condition_every: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timers.setdefault("logging", 0.0)

    def _logged(self, layer: WhitenedLayer) -> bool:
        return bool(self.condition_every) and layer.refreshes % self.condition_every == 0

    def _refresh(self, layer: WhitenedLayer) -> None:
        assert layer.stats.cov is not None  # refreshes follow the first statistics
        dtype = layer.stats.cov.dtype
        if self.spectrum == "clip":
            decomposed = self.decompose(layer)
            if decomposed is None:
                return
            evals, evecs, damping = decomposed
            gradient_state(layer).q = clipped_from_eigh(evals, evecs, self.normalize).to(dtype)
            if self._logged(layer):
                with self._timed("logging"):
                    self._log_kappa(layer, evals, damping)
            return
        q = damped_inverse(layer.stats.cov, self.damping(layer), self.normalize)
        if q is None:
            self.fallbacks += 1
            return
        gradient_state(layer).q = q.to(dtype)
        if self._logged(layer):
            with self._timed("logging"):
                decomposed = self.decompose(layer)
                if decomposed is not None:
                    self._log_kappa(layer, decomposed[0], decomposed[2])

    def _log_kappa(self, layer: WhitenedLayer, evals: Tensor, damping: Tensor) -> None:
        raw = evals - damping.to(evals.dtype)[:, None]
        layer.kappa_r = condition_number(raw)
        layer.kappa_white = condition_number(raw.clamp_min(0.0) / evals)


def damped_inverse(cov: Tensor, damping: Tensor, normalize: bool) -> Tensor | None:
    """``c (R + damping I)^-1`` from a Cholesky factor (``c`` as in :func:`inverse_from_eigh`:
    the mean eigenvalue, which is ``trace(R + damping I) / M`` and needs no eigenvalues)."""
    factor = damped_cholesky(cov, damping)
    if factor is None:
        return None
    q = inverse_from_cholesky(factor)
    if normalize:
        m = cov.shape[-1]
        mean = (cov.diagonal(dim1=-2, dim2=-1).sum(-1) + m * damping) / m
        q = q * mean.to(q.dtype)[:, None, None]
    return q
