"""Which modules of a model are whitened, and why the others are not.

Every candidate (a Linear or Conv1d/2d/3d, subclasses included, plus the modules whitening cannot
serve: transposed convolutions and ``nn.MultiheadAttention``'s fused input projection) gets one row
with its patch dimension ``M``, its weight groups and covariance blocks, and the reason it is
skipped, so that nothing is dropped silently.  A weight ``Parameter`` shared by several modules is
whitened once, from the statistics of all of them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from brisk.whitening.adapters import LAYER_TYPES, LayerAdapter, make_adapter
from brisk.whitening.settings import WhiteningSettings

__all__ = ["Candidate", "select", "selection_table"]

_UNSUPPORTED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class Candidate:
    """One module that whitening considered: whitened when ``skip_reason`` is None."""

    name: str
    module: nn.Module
    adapter: LayerAdapter | None
    skip_reason: str | None = None
    shares_weight_with: str | None = None  # the first module holding the same weight Parameter

    @property
    def kind(self) -> str:
        """The module's class name, as the selection table prints it."""
        return type(self.module).__name__

    @property
    def dim(self) -> int | None:
        """Inputs per weight group (the full ``M``, before any blocking)."""
        if self.adapter is None:
            return None
        return self.adapter.dim * self.adapter.blocks

    @property
    def weight_groups(self) -> int:
        """Weight groups before blocking (``groups`` of a convolution); 0 without an adapter."""
        if self.adapter is None:
            return 0
        return self.adapter.groups // self.adapter.blocks


def _skip_reason(name: str, module: nn.Module, settings: WhiteningSettings) -> str | None:
    """Why a supported module is *not* whitened, or None when it is."""
    if not isinstance(module, tuple(LAYER_TYPES[t] for t in settings.layer_types)):
        return "type not in layer_types"
    if not any(fnmatch.fnmatchcase(name, p) for p in settings.include):
        return "not included"
    if any(fnmatch.fnmatchcase(name, p) for p in settings.exclude):
        return "excluded"
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.UninitializedParameter):
        return "no weight"
    if not weight.requires_grad:
        return "frozen (requires_grad=False)"
    return None


def select(
    model: nn.Module, settings: WhiteningSettings, *, gradient_transform: bool
) -> list[Candidate]:
    """Every candidate module of ``model`` in ``named_modules`` order, with its verdict.

    ``gradient_transform`` is False for forward-pass whitening, which must own a module's forward
    and therefore cannot whiten a weight shared by several modules nor a block-diagonal layer.
    """
    out: list[Candidate] = []
    owner: dict[int, Candidate] = {}  # id(weight) -> first whitened candidate holding it
    # MultiheadAttention uses its out_proj's weight without calling the module
    supported: tuple[type[nn.Module], ...] = tuple(LAYER_TYPES.values())
    parents = {id(m.out_proj): m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            bare = "in_proj_weight is a bare Parameter (out_proj has its own row)"
            out.append(Candidate(name, module, None, bare))
            continue
        if isinstance(module, _UNSUPPORTED):
            out.append(Candidate(name, module, None, "transposed convolution"))
            continue
        if not isinstance(module, supported):
            continue
        reason = _skip_reason(name, module, settings)
        parent = parents.get(id(module))
        if reason is None and parent is not None and not gradient_transform:
            reason = "inside MultiheadAttention, which never calls it"
        adapter = None
        if reason != "no weight":
            adapter = make_adapter(module, settings.max_block, parent)
        cand = Candidate(name, module, adapter, reason)
        out.append(cand)
        if reason is not None or adapter is None:
            continue
        if settings.max_dim is not None and adapter.dim > settings.max_dim:
            cand.skip_reason = f"M={cand.dim} > max_dim={settings.max_dim}"
            continue
        if adapter.blocks > 1 and not gradient_transform:
            cand.skip_reason = f"M={cand.dim} > max_block={settings.max_block} (no blocks here)"
            continue
        first = owner.get(id(module.weight))
        if first is None:
            owner[id(module.weight)] = cand
            continue
        cand.shares_weight_with = first.name
        assert first.adapter is not None  # only candidates with an adapter are owners
        if (adapter.groups, adapter.dim) != (first.adapter.groups, first.adapter.dim):
            cand.skip_reason = f"shares its weight with {first.name} in another layout"
        elif not gradient_transform:
            cand.skip_reason = f"shares its weight with {first.name}"
            if first.skip_reason is None:
                first.skip_reason = f"shares its weight with {name}"
    return out


def selection_table(candidates: list[Candidate]) -> str:
    """One aligned text table: module, type, M, groups x blocks, and the verdict."""
    header = ("module", "type", "M", "groups x blocks", "whitened")
    rows = [header]
    for c in candidates:
        if c.adapter is None:
            m, shape = "-", "-"
        else:
            m = str(c.dim)
            shape = f"{c.weight_groups} x {c.adapter.blocks}"
            if c.adapter.blocks > 1:
                shape += f" of {c.adapter.dim}"
        if c.skip_reason is not None:
            verdict = f"no: {c.skip_reason}"
        elif c.shares_weight_with is not None:
            verdict = f"yes (pooled with {c.shares_weight_with})"
        else:
            verdict = "yes"
        rows.append((c.name or "(model)", c.kind, m, shape, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines)
