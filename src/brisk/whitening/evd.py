"""``whitening=evd``: exact whitening by a gradient transform (arXiv 2010.01546, contribution 1).

Feature whitening trains ``W~`` on whitened inputs ``P (x - mu)`` with ``P^T P = (R + eps I)^-1``.
Mapped back to the ordinary weights ``W = W~ P`` one SGD step on ``W~`` is one step on ``W`` with
the gradient right-multiplied by ``(R + eps I)^-1``; so the forward and backward passes stay
untouched and each weight gradient is transformed once per batch (``S M^2`` work instead of the
``2 N M^2`` of transforming every sample).  The inverse comes from an eigen-decomposition refreshed
every ``inverse_every`` steps; the eigenvalues are kept for the condition-number logs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from brisk.whitening.gradient import GradientWhitening
from brisk.whitening.layers import WhitenedLayer
from brisk.whitening.linalg import condition_number

__all__ = ["EVDWhitening", "inverse_from_eigh"]


def inverse_from_eigh(evals: Tensor, evecs: Tensor, normalize: bool) -> Tensor:
    """``c (R + eps I)^-1`` with ``c`` the mean eigenvalue when normalising, else 1.

    Normalising keeps ``trace(Q (R + eps I)) = trace(R + eps I)``: the whitened inputs keep the
    raw inputs' average variance, so a learning rate tuned for SGD stays in the right range.
    """
    scale = evals.mean(-1, keepdim=True) if normalize else torch.ones_like(evals[..., :1])
    return (evecs * (scale / evals).unsqueeze(-2)) @ evecs.transpose(-1, -2)


class EVDWhitening(GradientWhitening):
    """Gradient-transform whitening with an exact damped inverse of the input covariance."""

    name = "evd"

    def _refresh(self, layer: WhitenedLayer) -> None:
        decomposed = self.decompose(layer)
        if decomposed is None:
            return
        evals, evecs, damping = decomposed
        q = inverse_from_eigh(evals, evecs, self.normalize)
        layer.state["Q"] = q.to(layer.stats.cov.dtype)
        raw = evals - damping.to(evals.dtype)[:, None]
        layer.kappa_r = condition_number(raw)
        layer.kappa_white = condition_number(raw.clamp_min(0.0) / evals)
