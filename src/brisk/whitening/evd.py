"""``whitening=evd``: exact whitening by a gradient transform (arXiv 2010.01546, contribution 1).

Feature whitening trains ``W~`` on whitened inputs ``P (x - mu)`` with ``P^T P = (R + eps I)^-1``.
Mapped back to the ordinary weights ``W = W~ P`` one SGD step on ``W~`` is one step on ``W`` with
the gradient right-multiplied by ``(R + eps I)^-1``; so the forward and backward passes stay
untouched and each weight gradient is transformed once per batch (``S M^2`` work instead of the
``2 N M^2`` of transforming every sample).

The inverse is the cheapest exact one: a Cholesky factor of ``R + eps I`` in the statistics' dtype
(with a float64 retry chosen by a device mask) and one triangular solve, about a tenth of a float64
eigen-decomposition's time, batched over every covariance of one size.  Eigenvalues are computed
only for the condition-number logs, on every ``condition_every``-th refresh (0, the default,
never).

``spectrum: clip`` is an ablation, not whitening: ``Q = U min(1, l_ref / l) U^T`` from an
eigen-decomposition (``l_ref`` the mean eigenvalue of ``R + eps I``) only shrinks the directions
above the mean and leaves the rest alone, roughly where a shrink-only recursive update ends after a
few refreshes.  It separates the gain of whitening from that of taming the dominant directions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brisk.whitening.covariance import CovarianceGroup
from brisk.whitening.gradient import GradientWhitening, gradient_state
from brisk.whitening.linalg import condition_number, damped_inverse
from brisk.whitening.orchestrator import WhitenedLayer
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
    """Gradient-transform whitening with an exact damped inverse of the input covariance.

    A refresh is one batched Cholesky factorisation per covariance group (float64 retry and
    fallback chosen on the device), then one triangular solve: no host synchronisation.
    """

    name = "evd"

    settings_type = EVDSettings
    spectrum: str
    condition_every: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timers.setdefault("logging", 0.0)

    @property
    def _splittable(self) -> bool:
        return self.spectrum != "clip"  # the ablation refreshes layer by layer

    def _refresh_group(self, group: CovarianceGroup, slabs: slice) -> None:
        if self.spectrum == "clip":
            self._refresh_clipped(group)
            return
        cov, trace = group.buffers["cov"][slabs], group.buffers["trace"][slabs]
        q, first, ok = damped_inverse(cov, self.group_damping(trace, group.dim), self.normalize)
        self._accept(group, slabs, q, first, ok)

    def _refresh_clipped(self, group: CovarianceGroup) -> None:
        """The ``clip`` ablation: an eigen-decomposition per layer (which reads its result on the
        host; an ablation, not the shipped algorithm)."""
        for layer in self.layers:
            if layer.group is not group or int(layer.stats.updates) == 0:
                continue
            decomposed = self.decompose(layer)
            if decomposed is None:
                group.buffers["failed"][layer.slabs].add_(1)
                continue
            evals, evecs, _ = decomposed
            state = gradient_state(layer)
            assert state.q is not None and state.mu is not None and layer.stats.mean is not None
            state.q.copy_(clipped_from_eigh(evals, evecs, self.normalize))
            state.mu.copy_(layer.stats.mean)

    def _condition_numbers(self, layer: WhitenedLayer) -> tuple[float, float] | None:
        """kappa(R) and kappa(Q R) from the damped eigenvalues ``decompose`` gives."""
        decomposed = self.decompose(layer)
        if decomposed is None:
            return None
        evals, _, damping = decomposed
        raw = evals - damping.to(evals.dtype)[:, None]
        return condition_number(raw), condition_number(raw.clamp_min(0.0) / evals)
