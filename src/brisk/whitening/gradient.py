"""The gradient-transform algebra shared by ``evd`` and ``recursive``.

Both algorithms derive a per-group preconditioner ``Q`` from a layer's input covariance and apply
it to the weight gradient after the backward pass; how the bias gradient is corrected so that the
transform equals centred feature whitening, how weight decay enters that correction, and how the
refreshes are spread over data-parallel ranks is the same for both and lives here.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from brisk.runtime import is_distributed
from brisk.whitening.distributed import assign_by_cost, share_from_owners
from brisk.whitening.layers import LayerWhitening, WhitenedLayer
from brisk.whitening.settings import GradientSettings, WhiteningSettings
from brisk.whitening.state import GradientState

__all__ = ["GradientWhitening"]


def gradient_state(layer: WhitenedLayer) -> GradientState:
    """``layer``'s state, typed (every gradient-transform algorithm keeps a GradientState)."""
    state = layer.state
    assert isinstance(state, GradientState)
    return state


class GradientWhitening(LayerWhitening):
    """Whitening by transforming weight gradients: ``grad_W <- (grad_W - g_b mu^T) Q``.

    ``Q`` is a per-group symmetric preconditioner approximating a multiple of ``(R + eps I)^-1``.
    With a bias the augmented-input algebra (exact equivalent of centring the input) also rewrites
    the bias gradient: ``g_b <- g_b - (G_c Q) mu``.  ``mu`` and ``Q`` are refreshed together,
    exactly as forward-pass whitening re-centres.  Weight decay itself is left to the optimizer and
    is never preconditioned: decay of the whitened weights *is* plain decay of ``W``.  What it does
    to the bias (``b = b~ - W mu`` moves when ``W`` decays and ``b~`` does not) is added right
    before the optimizer steps, from the decay that optimizer applies (:meth:`_decay_bias`).

    With several data-parallel ranks each due refresh runs on one rank, chosen by cost, and the
    result is broadcast (``brisk.whitening.distributed``).
    """

    settings_type: ClassVar[type[WhiteningSettings]] = GradientSettings
    gradient_transform: ClassVar[bool] = True
    unpaired_weight_decay: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decay_due: dict[int, WhitenedLayer] = {}

    def _init_layer(self, layer: WhitenedLayer) -> None:
        layer.state = GradientState()

    def _precondition(self, step: int) -> None:
        if self._collect:
            self._commit(self.layers)
        due = [layer for layer in self.layers if self._refresh_due(layer, step)]
        with self._timed("decomposition"):
            self._refresh_all(due)
            for layer in due:
                layer.refreshes += 1
                # the centring used by the bias algebra changes together with Q, as in the
                # forward-pass whitening it is equivalent to
                assert layer.stats.mean is not None  # refreshed layers have statistics
                gradient_state(layer).mu = layer.stats.mean.clone()
        self._decay_due = {}
        if step < self.start_step:
            return
        with self._timed("transform"), torch.no_grad():
            for layer in self.layers:
                if gradient_state(layer).q is not None:
                    self._transform(layer)
                    self._decay_due[id(layer.module.weight)] = layer

    def _refresh(self, layer: WhitenedLayer) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------- distribution
    def _refresh_all(self, due: list[WhitenedLayer]) -> None:
        """Refresh ``due``: here, or each on the rank the cost-balanced assignment picks."""
        world = torch.distributed.get_world_size() if is_distributed() else 1
        if world == 1 or len(due) == 0:
            for layer in due:
                self._refresh(layer)
            return
        owners = assign_by_cost([self._refresh_cost(layer) for layer in due], world)
        rank = torch.distributed.get_rank()
        fallbacks: dict[int, int] = {}  # the owner's fallbacks per layer, counted on every rank
        for layer, owner in zip(due, owners):
            if owner == rank:
                before = self.fallbacks
                self._refresh(layer)
                fallbacks[id(layer)] = self.fallbacks - before
        cov = due[0].stats.cov
        assert cov is not None

        def pack(layer: WhitenedLayer) -> dict[str, Any]:
            return {**self._pack_refresh(layer), "fallbacks": fallbacks[id(layer)]}

        share_from_owners(due, owners, pack, self._unpack_refresh, cov.device)

    def _refresh_cost(self, layer: WhitenedLayer) -> float:
        """Relative cost of refreshing ``layer``, for the assignment: a decomposition, ``M^3``
        per group and block (an algorithm whose refresh scales otherwise overrides this)."""
        return layer.cost

    def _pack_refresh(self, layer: WhitenedLayer) -> dict[str, Any]:
        """What a refresh changed: the algorithm state, the (tracked) covariance, the logs."""
        packed: dict[str, Any] = {f"state.{k}": v for k, v in layer.state.to_dict().items()}
        packed.update(cov=layer.stats.cov, kappa_r=layer.kappa_r, kappa_white=layer.kappa_white)
        return packed

    def _unpack_refresh(self, layer: WhitenedLayer, packed: dict[str, Any]) -> None:
        state = {k.removeprefix("state."): v for k, v in packed.items() if k.startswith("state.")}
        self.fallbacks += int(packed.get("fallbacks", 0))
        assert layer.stats.cov is not None
        layer.stats.cov.copy_(packed["cov"])
        layer.kappa_r, layer.kappa_white = packed["kappa_r"], packed["kappa_white"]
        self._load_layer_state(layer, state)

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
