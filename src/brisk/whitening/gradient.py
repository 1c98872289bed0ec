"""The gradient-transform algebra shared by ``evd`` and ``recursive``.

Both algorithms derive a per-group preconditioner ``Q`` from a layer's input covariance and apply
it to the weight gradient after the backward pass; how the bias gradient is corrected so that the
transform equals centred feature whitening, how weight decay enters that correction, and how the
refreshes are spread over data-parallel ranks is the same for both and lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from brisk.runtime import is_distributed
from brisk.whitening.covariance import CovarianceGroup
from brisk.whitening.distributed import assign_by_cost, broadcast_from_owners, slab_runs
from brisk.whitening.orchestrator import LayerWhitening, WhitenedLayer
from brisk.whitening.settings import GradientSettings, WhiteningSettings
from brisk.whitening.state import GradientState

__all__ = ["GradientWhitening"]


def gradient_state(layer: WhitenedLayer) -> GradientState:
    """``layer``'s state, typed (every gradient-transform algorithm keeps a GradientState)."""
    state = layer.state
    assert isinstance(state, GradientState)
    return state


@dataclass
class Bucket:
    """Bias-free layers of one group whose gradient matrices share a shape ``(S_g, M)``: one
    contiguous run ``[lo, hi)`` of the group's slabs, transformed by one batched product."""

    group: CovarianceGroup
    layers: list[WhitenedLayer]
    lo: int
    hi: int


class GradientWhitening(LayerWhitening):
    """Whitening by transforming weight gradients: ``grad_W <- (grad_W - g_b mu^T) Q``.

    ``Q`` is a per-group symmetric preconditioner approximating a multiple of ``(R + eps I)^-1``.
    With a bias the augmented-input algebra (exact equivalent of centring the input) also rewrites
    the bias gradient: ``g_b <- g_b - (G_c Q) mu``.  ``mu`` and ``Q`` are refreshed together,
    exactly as forward-pass whitening re-centres.  Weight decay itself is left to the optimizer and
    is never preconditioned: decay of the whitened weights *is* plain decay of ``W``.  What it does
    to the bias (``b = b~ - W mu`` moves when ``W`` decays and ``b~`` does not) is added right
    before the optimizer steps, from the decay that optimizer applies (:meth:`_decay_bias`).

    Per covariance group the preconditioners are one stacked buffer ``q (N, M, M)`` (and ``mu``),
    refreshed by one batched call and updated in place; each layer's state holds views into it.
    A refresh whose result is not usable (a failed factorisation, a layer without accepted
    statistics) keeps the previous preconditioner by a device mask.  With several data-parallel
    ranks every rank refreshes every group: the statistics are all-reduced first, so all ranks
    derive the same preconditioners without another collective.
    """

    settings_type: ClassVar[type[WhiteningSettings]] = GradientSettings
    gradient_transform: ClassVar[bool] = True
    state_type: ClassVar[type[GradientState]] = GradientState
    unpaired_weight_decay: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decay_due: dict[int, WhitenedLayer] = {}

    def _init_layer(self, layer: WhitenedLayer) -> None:
        layer.state = self.state_type()

    # ---------------------------------------------------------------------------- buffers
    def _ensure_preconditioners(self, group: CovarianceGroup) -> dict[str, Tensor]:
        """Create the group's ``q`` (identity), ``mu`` and failure counts once its statistics
        exist, and point every member's state at its slices."""
        b = group.buffers
        if "q" not in b:
            cov = b["cov"]
            n, m = cov.shape[0], group.dim
            b["q"] = torch.eye(m, dtype=cov.dtype, device=cov.device).expand(n, m, m).clone()
            b["mu"] = torch.zeros(n, m, dtype=cov.dtype, device=cov.device)
            b["retried"] = torch.zeros(n, dtype=torch.int64, device=cov.device)
            b["failed"] = torch.zeros(n, dtype=torch.int64, device=cov.device)
            self._init_group(group)
            for layer in self.layers:
                if layer.group is group:
                    state = gradient_state(layer)
                    state.q, state.mu = b["q"][layer.slabs], b["mu"][layer.slabs]
        return b

    def _init_group(self, group: CovarianceGroup) -> None:
        """The algorithm's own per-group buffers (created with ``q``)."""

    def _has_statistics(self, group: CovarianceGroup) -> Tensor:
        """Per slab: whether its layer has accepted statistics (a device mask)."""
        b = group.buffers
        fed = b["updates"] > 0
        return fed if len(fed) == group.size else fed[b["slab_member"]]

    def _accept(
        self, group: CovarianceGroup, slabs: slice, q: Tensor, first: Tensor | None, ok: Tensor
    ) -> None:
        """Store a refresh where it is usable and count the failures, all on the device.

        ``slabs``: the part of the group refreshed; ``first`` marks the slabs that succeeded
        without a retry (None: the algorithm has none).
        """
        kept_q, mu, mean, retried, failed = (
            group.buffers[k][slabs] for k in ("q", "mu", "mean", "retried", "failed")
        )
        fed = self._has_statistics(group)[slabs]
        valid = ok & fed
        # written in place (out= the kept buffer itself): one operator each, no copy
        torch.where(valid[:, None, None], q.to(kept_q.dtype), kept_q, out=kept_q)
        torch.where(valid[:, None], mean, mu, out=mu)
        if first is not None:
            retried.add_(valid > first)  # valid and not first
        failed.add_(fed > ok)  # fed and not ok

    def failure_counts(self) -> dict[str, tuple[int, int]]:
        """Per layer, refreshes rescued by the float64 retry and refreshes that failed (host
        read of the device counts)."""
        out = {}
        for layer in self.layers:
            b = layer.group.buffers
            if "failed" in b:
                sl = layer.slabs
                out[layer.name] = (int(b["retried"][sl].sum()), int(b["failed"][sl].sum()))
        return out

    # ----------------------------------------------------------------------------- a step
    def _precondition(self, step: int) -> None:
        if self._collect:
            self._commit()
        if self._refresh_due(step):
            with self._timed("decomposition"), torch.no_grad():
                self._refresh_groups([g for g in self.groups if g.ready])
                for layer in self.layers:
                    if layer.group.ready:
                        layer.refreshes += 1
                self._refreshed = True
                self._log_condition_numbers()
        self._decay_due = {}
        if step < self.start_step or not self._refreshed:
            return
        with self._timed("transform"), torch.no_grad():
            self._transform_all()

    def _refresh_groups(self, groups: list[CovarianceGroup]) -> None:
        """Refresh ``groups``: here, or in parts on the ranks the cost-balanced assignment picks.

        With several ranks each group's stack is cut into at most ``world`` runs of slabs (a
        group of equal-size blocks can hold most of the cost), each run is refreshed by one rank
        in one batched call, and its slices of the buffers are broadcast.
        """
        for group in groups:
            self._ensure_preconditioners(group)
        world = torch.distributed.get_world_size() if is_distributed() else 1
        if world == 1:
            for group in groups:
                self._refresh_group(group, slice(None))
            return
        parts = [
            (group, part)
            for group in groups
            for part in slab_runs(group.size, world if self._splittable else 1)
        ]
        owners = assign_by_cost(
            [float((part.stop - part.start) * group.dim**3) for group, part in parts], world
        )
        rank = torch.distributed.get_rank()
        for (group, part), owner in zip(parts, owners):
            if owner == rank:
                self._refresh_group(group, part)
        names = ("q", "mu", "retried", "failed", *self._shared_buffers)
        shared = [[g.buffers[n][part] for n in names if n in g.buffers] for g, part in parts]
        broadcast_from_owners(shared, owners)

    # the algorithm's own per-group buffers that a refresh changes (broadcast with q)
    _shared_buffers: ClassVar[tuple[str, ...]] = ()

    @property
    def _splittable(self) -> bool:
        """Whether a refresh of part of a group's slabs is possible (not for per-layer work)."""
        return True

    def _refresh_group(self, group: CovarianceGroup, slabs: slice) -> None:
        """Derive the preconditioners of the slabs ``slabs`` of ``group`` in one batched pass."""
        raise NotImplementedError

    def _log_condition_numbers(self) -> None:
        """kappa(R) and kappa of the whitened statistics on every ``condition_every``-th refresh
        of a layer (an ``M^3`` eigen-decomposition with a host read: logging only, off by
        default)."""
        if not self.condition_every:
            return
        with self._timed("logging"):
            for layer in self.layers:
                if not layer.group.ready or (layer.refreshes - 1) % self.condition_every:
                    continue
                kappas = self._condition_numbers(layer)
                if kappas is not None:
                    layer.kappa_r, layer.kappa_white = kappas

    def _condition_numbers(self, layer: WhitenedLayer) -> tuple[float, float] | None:
        """kappa(R) and kappa(Q R) of ``layer``, or None when they cannot be had now."""
        return None

    # ------------------------------------------------------------------------ checkpoints
    def _layer_state_dict(self, layer: WhitenedLayer) -> dict[str, Any]:
        """``q`` as its upper triangle (it is exactly symmetric) and ``mu``."""
        state = gradient_state(layer)
        if state.q is None or state.mu is None:
            return {"q": None, "mu": None}
        m = layer.adapter.dim
        rows, cols = torch.triu_indices(m, m, device=state.q.device)
        return {"q": state.q[:, rows, cols].clone(), "mu": state.mu.clone()}

    def _load_layer_state(self, layer: WhitenedLayer, state: dict[str, Any]) -> None:
        for key in ("q", "mu"):
            if key not in state:
                raise ValueError(f"whitening state has no '{key}' for {type(layer.state).__name__}")
        if state["q"] is None or not layer.group.ready:
            return
        b = self._ensure_preconditioners(layer.group)
        m = layer.adapter.dim
        rows, cols = torch.triu_indices(m, m, device=b["q"].device)
        packed = state["q"].to(b["q"])
        q = b["q"][layer.slabs]
        q[:, rows, cols] = packed
        q[:, cols, rows] = packed
        b["mu"][layer.slabs].copy_(state["mu"])

    # ------------------------------------------------------------------------- transform
    def _buckets(self) -> list[Bucket]:
        """Contiguous runs of bias-free, unblocked layers with one gradient shape per group."""
        cached = getattr(self, "_bucket_cache", None)
        if cached is not None:
            return cached
        buckets: list[Bucket] = []
        for group in self.groups:
            members = sorted(
                (layer for layer in self.layers if layer.group is group),
                key=lambda layer: layer.stats.lo,
            )
            for layer in members:
                simple = not (layer.has_bias and self.center) and layer.adapter.blocks == 1
                if not simple:
                    continue
                last = buckets[-1] if buckets else None
                if (
                    last is not None
                    and last.group is group
                    and last.hi == layer.stats.lo
                    and last.layers[0].rows_out == layer.rows_out
                ):
                    last.layers.append(layer)
                    last.hi = layer.stats.hi
                else:
                    buckets.append(Bucket(group, [layer], layer.stats.lo, layer.stats.hi))
        self._bucket_cache = buckets
        return buckets

    def _transform_all(self) -> None:
        """Every whitened gradient: one batched product per shape bucket, the rest per layer."""
        done: set[int] = set()
        for bucket in self._buckets():
            if "q" not in bucket.group.buffers:
                continue
            grads = [cast(Tensor, layer.module.weight).grad for layer in bucket.layers]
            if any(g is None or not g.is_contiguous() for g in grads):
                continue  # per layer below
            mats = [
                layer.adapter.weight_matrix(cast(Tensor, g))
                for layer, g in zip(bucket.layers, grads)
            ]
            q = bucket.group.buffers["q"][bucket.lo : bucket.hi]
            stacked = mats[0] if len(mats) == 1 else torch.cat(mats)
            out = torch.bmm(stacked.to(q.dtype), q)
            if len(mats) == 1:
                mats[0].copy_(out)
            else:
                parts = out.split([layer.adapter.groups for layer in bucket.layers])
                torch._foreach_copy_(mats, list(parts))
            done.update(id(layer) for layer in bucket.layers)
            for layer in bucket.layers:
                self._decay_due[id(layer.module.weight)] = layer
        for layer in self.layers:
            if id(layer) not in done and gradient_state(layer).q is not None:
                self._transform(layer)
                self._decay_due[id(layer.module.weight)] = layer

    # ------------------------------------------------------------------------------ algebra
    def _transform(self, layer: WhitenedLayer) -> None:
        module, adapter, state = layer.module, layer.adapter, gradient_state(layer)
        q, mu = state.q, state.mu
        grad = cast(Tensor, module.weight).grad
        if grad is None or q is None:
            return
        g = adapter.weight_matrix(grad).to(q.dtype)  # (G * blocks, S_g, m)
        biases = [b for b in layer.biases if b.grad is not None] if self.center else []
        if biases:
            blocks = adapter.blocks
            assert mu is not None  # set with Q at every refresh
            mu = mu.to(q.dtype)  # (G * blocks, m)
            gb = cast(Tensor, sum(cast(Tensor, b.grad).to(q.dtype) for b in biases)).reshape(
                adapter.groups // blocks, -1
            )
            gb_blocks = gb.repeat_interleave(blocks, dim=0) if blocks > 1 else gb
            gq = (g - gb_blocks.unsqueeze(-1) * mu.unsqueeze(-2)) @ q
            shift = (gq @ mu.unsqueeze(-1))[..., 0]  # (G * blocks, S_g)
            if self.unpaired_weight_decay:
                shift = shift + self.unpaired_weight_decay * self._weight_times_mean(layer, q.dtype)
            if blocks > 1:
                shift = shift.reshape(-1, blocks, shift.shape[-1]).sum(1)
            for b in biases:
                b_grad = b.grad
                assert b_grad is not None  # biases without a gradient were left out above
                own = b_grad.reshape(shift.shape).to(q.dtype)
                b_grad.copy_((own - shift).reshape(b_grad.shape))
        else:
            gq = g @ q
        grad.copy_(adapter.weight_from_matrix(gq, grad.shape))

    def _weight_times_mean(self, layer: WhitenedLayer, dtype: torch.dtype) -> Tensor:
        """``W mu`` per block, ``(G * blocks, S_g)``."""
        mu = gradient_state(layer).mu
        assert mu is not None  # only called on layers whose Q (and so mu) is set
        w = layer.adapter.weight_matrix(cast(Tensor, layer.module.weight).detach()).to(dtype)
        return (w @ mu.to(dtype).unsqueeze(-1))[..., 0]

    # --------------------------------------------------------------------- weight decay
    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        super()._before_optimizer_step(optimizer, args, kwargs)
        if self.unpaired_weight_decay is None and self._decay_due and self.center:
            with torch.no_grad():
                self._decay_bias(optimizer)

    def _decay_bias(self, optimizer: torch.optim.Optimizer) -> None:
        """Move each bias as weight decay of the whitened weights moves it, from ``optimizer``.

        With centring, ``b = b~ - W mu``: decaying ``W~`` but not ``b~`` moves ``b`` by
        ``lr (lambda_w - lambda_b) W mu``.  Coupled (L2) decay, as SGD and Adam apply it, enters
        through the gradient, ``g_b -= (lambda_w - lambda_b) W mu`` (equal learning rates assumed);
        decoupled decay (AdamW) is added to the bias directly, scaled so that the optimizer's own
        decay of the bias leaves exactly that move.
        """
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for key, layer in list(self._decay_due.items()):
            w_group = groups.get(key)
            biases = [b for b in layer.biases if id(b) in groups]
            if w_group is None or not biases:
                continue
            del self._decay_due[key]
            blocks = layer.adapter.blocks
            mu = gradient_state(layer).mu
            assert mu is not None  # decay is due only where Q (and so mu) was applied
            wmu = self._weight_times_mean(layer, mu.dtype)
            if blocks > 1:
                wmu = wmu.reshape(-1, blocks, wmu.shape[-1]).sum(1)
            lam_w, lr_w = float(w_group.get("weight_decay", 0.0)), float(w_group["lr"])
            decoupled = bool(w_group.get("decoupled_weight_decay", False))
            for b in biases:
                b_group = groups[id(b)]
                lam_b, lr_b = float(b_group.get("weight_decay", 0.0)), float(b_group["lr"])
                if decoupled:
                    coef = (lr_w * lam_w - lr_b * lam_b) / (1.0 - lr_b * lam_b)
                    if coef:
                        b.add_((coef * wmu).reshape(b.shape).to(b.dtype))
                elif lam_w != lam_b and b.grad is not None:
                    b.grad.sub_(((lam_w - lam_b) * wmu).reshape(b.grad.shape).to(b.grad.dtype))
