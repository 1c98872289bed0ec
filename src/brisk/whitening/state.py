"""Typed per-layer state of each whitening algorithm.

Each algorithm keeps a few tensors per whitened weight; naming them as dataclass fields (rather than
string keys) lets the type checker follow them through the algebra and gives checkpoints one
declared layout.  Checkpoints store the fields by name as plain tensors, so ``weights_only``
loading reads them; the string keys of earlier checkpoints (``"Q"``, ``"T"``, ...) still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["FeatureState", "GradientState", "LayerState", "RecursiveState"]


@dataclass(kw_only=True)
class LayerState:
    """The tensors one algorithm keeps for one whitened weight (``None``: not derived yet)."""

    # field name -> the string key that checkpoints written before the typed state used
    legacy_keys: ClassVar[Mapping[str, str]] = {}

    def to_dict(self) -> dict[str, Tensor | None]:
        """The fields by name, for checkpoints and for broadcasting a refresh to other ranks."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load(self, saved: Mapping[str, Any]) -> None:
        """Copy the fields from :meth:`to_dict`'s output (or an earlier checkpoint's keys)."""
        for f in fields(self):
            key = f.name if f.name in saved else self.legacy_keys.get(f.name, f.name)
            if key not in saved:
                raise ValueError(f"whitening state has no '{f.name}' for {type(self).__name__}")
            value = saved[key]
            setattr(self, f.name, value.clone() if isinstance(value, Tensor) else value)


@dataclass(kw_only=True)
class GradientState(LayerState):
    """``evd``'s state: the per-group preconditioner and the centring it was derived with."""

    legacy_keys: ClassVar[Mapping[str, str]] = {"q": "Q"}

    q: Tensor | None = None  # (G * blocks, m, m), a multiple of (R + eps I)^-1; None: identity
    mu: Tensor | None = None  # (G * blocks, m), the input mean at Q's refresh (bias algebra)


@dataclass(kw_only=True)
class RecursiveState(GradientState):
    """``recursive``'s state: the transform ``T`` it refines, and two products kept up to date.

    ``t_outer`` (``T T^T``) damps the tracked covariance ``R~ = T R T^T``; ``t_gram``
    (``T^T T``) is the preconditioner before normalisation.  Keeping both avoids an ``M^3``
    product per refresh.
    """

    legacy_keys: ClassVar[Mapping[str, str]] = {
        "q": "Q",
        "t": "T",
        "t_outer": "TT",
        "t_gram": "Qraw",
    }

    t: Tensor
    t_outer: Tensor
    t_gram: Tensor

    @classmethod
    def identity(cls, groups: int, dim: int) -> RecursiveState:
        """The state before any refresh: ``T = I``."""
        eye = torch.eye(dim).expand(groups, dim, dim)
        return cls(t=eye.clone(), t_outer=eye.clone(), t_gram=eye.clone())

    def to_(self, like: Tensor) -> None:
        """Move the transform to ``like``'s device and dtype (the statistics', once they exist)."""
        self.t = self.t.to(device=like.device, dtype=like.dtype)
        self.t_outer = self.t_outer.to(device=like.device, dtype=like.dtype)
        self.t_gram = self.t_gram.to(device=like.device, dtype=like.dtype)


@dataclass(kw_only=True)
class FeatureState(LayerState):
    """``feature``'s state: the whitening matrix of the forward pass and its inverse.

    The layer holds ``W~ = W P^-1``; ``P^T P = c (R + eps I)^-1`` (``p_inv`` re-maps the weights
    and momentum when P changes).
    """

    legacy_keys: ClassVar[Mapping[str, str]] = {"p": "P", "p_inv": "P_inv"}

    p: Tensor | None = None  # (G, m, m); None: not whitened yet
    p_inv: Tensor | None = None
    mu: Tensor | None = None  # centring of the whitened inputs (layers with a bias)
