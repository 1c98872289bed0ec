"""The gradient-transform algebra shared by ``evd`` and ``recursive``.

Both algorithms derive a per-group preconditioner ``Q`` from a layer's input covariance and apply
it to the weight gradient after the backward pass; how the bias gradient is corrected so that the
transform equals centred feature whitening is the same for both and lives here.
"""

from __future__ import annotations

from typing import Any

import torch

from brisk.whitening.layers import LayerWhitening, WhitenedLayer

__all__ = ["GradientWhitening"]


class GradientWhitening(LayerWhitening):
    """Whitening by transforming weight gradients: ``grad_W <- (grad_W - g_b mu^T) Q``.

    ``Q`` is a per-group symmetric preconditioner approximating a multiple of ``(R + eps I)^-1``.
    With a bias the augmented-input algebra (exact equivalent of centring the input) also rewrites
    the bias gradient: ``g_b <- g_b - (G_c Q) mu - unpaired_weight_decay * W mu``; the last term is
    what weight decay on the whitened weights contributes to the bias when the optimizer decays the
    weights but not their biases (set it to that difference; 0, the default, is right when weights
    and biases are decayed alike, as a plain ``torch.optim.SGD(model.parameters(), ...)`` does).
    ``mu`` and ``Q`` are refreshed together, exactly as forward-pass whitening re-centres.  Weight
    decay itself is left to the optimizer and is never preconditioned.
    """

    def __init__(self, *args: Any, unpaired_weight_decay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unpaired_weight_decay = float(unpaired_weight_decay)

    def _init_layer(self, layer: WhitenedLayer) -> None:
        layer.state.update(Q=None, mu=None)

    def precondition(self, step: int) -> None:
        if self._collect:
            self._commit(self.layers)
        with self._timed("decomposition"):
            for layer in self.layers:
                if self._refresh_due(layer, step):
                    self._refresh(layer)
                    layer.refreshes += 1
                    # the centring used by the bias algebra changes together with Q, as in the
                    # forward-pass whitening it is equivalent to
                    layer.state["mu"] = layer.stats.mean.clone()
        if step < self.start_step:
            return
        with self._timed("transform"), torch.no_grad():
            for layer in self.layers:
                if layer.state.get("Q") is not None:
                    self._transform(layer)

    def _refresh(self, layer: WhitenedLayer) -> None:
        raise NotImplementedError

    def _transform(self, layer: WhitenedLayer) -> None:
        module, adapter, q = layer.module, layer.adapter, layer.state["Q"]
        grad = module.weight.grad
        if grad is None:
            return
        g = adapter.weight_matrix(grad).to(q.dtype)
        bias = module.bias if layer.has_bias else None
        if bias is not None and bias.grad is not None and self.center:
            mu = layer.state["mu"].to(q.dtype)  # (G, M)
            gb = bias.grad.reshape(adapter.groups, -1).to(q.dtype)  # (G, S_g)
            gq = (g - gb.unsqueeze(-1) * mu.unsqueeze(-2)) @ q
            shift = (gq @ mu.unsqueeze(-1))[..., 0]
            if self.unpaired_weight_decay:
                w = adapter.weight_matrix(module.weight.detach()).to(q.dtype)
                shift = shift + self.unpaired_weight_decay * (w @ mu.unsqueeze(-1))[..., 0]
            bias.grad.copy_((gb - shift).reshape(bias.grad.shape))
        else:
            gq = g @ q
        grad.copy_(gq.reshape(grad.shape))
