"""Typed per-layer state of each whitening algorithm.

Each algorithm keeps a few tensors per whitened weight; naming them as dataclass fields (rather than
string keys) lets the type checker follow them through the algebra and gives checkpoints one
declared layout.  For ``evd`` and ``recursive`` the fields are views into the stacked buffers of
the layer's covariance group (``brisk.whitening.gradient``), updated in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor

__all__ = ["FeatureState", "GradientState", "LayerState", "RecursiveState"]


@dataclass(kw_only=True)
class LayerState:
    """The tensors one algorithm keeps for one whitened weight (``None``: not derived yet)."""

    def to_dict(self) -> dict[str, Tensor | None]:
        """The fields by name, for checkpoints."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load(self, saved: Mapping[str, Any]) -> None:
        """Copy the fields from :meth:`to_dict`'s output."""
        for f in fields(self):
            if f.name not in saved:
                raise ValueError(f"whitening state has no '{f.name}' for {type(self).__name__}")
            value = saved[f.name]
            setattr(self, f.name, value.clone() if isinstance(value, Tensor) else value)


@dataclass(kw_only=True)
class GradientState(LayerState):
    """``evd``'s state: the per-group preconditioner and the centring it was derived with."""

    q: Tensor | None = None  # (G * blocks, m, m), a multiple of (R + eps I)^-1; None: identity
    mu: Tensor | None = None  # (G * blocks, m), the input mean at Q's refresh (bias algebra)


@dataclass(kw_only=True)
class RecursiveState(GradientState):
    """``recursive``'s state: the same preconditioner, refined in place by Newton-Schulz steps
    rather than recomputed (nothing else is needed: no transform, no second product)."""


@dataclass(kw_only=True)
class FeatureState(LayerState):
    """``feature``'s state: the whitening matrix of the forward pass and its inverse.

    The layer holds ``W~ = W P^-1``; ``P^T P = c (R + eps I)^-1`` (``p_inv`` re-maps the weights
    and momentum when P changes).
    """

    p: Tensor | None = None  # (G, m, m); None: not whitened yet
    p_inv: Tensor | None = None
    mu: Tensor | None = None  # centring of the whitened inputs (layers with a bias)
