"""``whitening=feature``: classical feature whitening, the reference for the gradient transform.

Each whitened layer computes ``y = W~ P (x - mu) + b~`` on its input patches: the samples are
transformed in the forward pass and, through autograd, their gradients in the backward pass (``P^T P
= c (R + eps I)^-1``, ``P = sqrt(c) L^-1`` from the Cholesky factor ``R + eps I = L L^T``; ``c`` is
the mean eigenvalue when ``normalize``). The module's parameters *are* the whitened-coordinate
weights ``W~, b~``: the optimizer steps in whitened space, which is what classical whitening means.
When P is refreshed the weights are re-expressed so that the network function does not change (``W~
<- W~ P_old P_new^-1``, PRONG's re-parametrisation), and so are SGD momentum buffers
(``momentum_buffer`` entries of any optimizer that steps these parameters), which keeps this
algorithm step-for-step equal to ``evd`` under SGD with momentum, Nesterov and weight decay. Other
optimizer state (Adam moments) is left as is: adaptive optimizers are not whitening-invariant.

Inputs are centred only for layers with a bias, which absorbs the shift; a bias-free layer keeps
``y = W~ P x`` (P still from the centred covariance), matching the gradient transform exactly.
It is deliberately simple and slow: every forward pass unfolds the whole batch.
"""

from __future__ import annotations

import weakref
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from brisk.whitening.linalg import condition_number, damped_cholesky
from brisk.whitening.orchestrator import LayerWhitening, WhitenedLayer
from brisk.whitening.state import FeatureState

__all__ = ["FeatureWhitening"]


def feature_state(layer: WhitenedLayer) -> FeatureState:
    """``layer``'s state, typed."""
    state = layer.state
    assert isinstance(state, FeatureState)
    return state


class FeatureWhitening(LayerWhitening):
    """Whitening of the layer inputs in the forward pass (baseline for correctness and cost)."""

    name = "feature"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timers.setdefault("logging", 0.0)
        self._optimizers: list[weakref.ref] = []
        self._refreshed_at: dict[str, int] = {}
        self._failed: dict[str, int] = {}  # per layer: refreshes whose Cholesky failed

    def _init_layer(self, layer: WhitenedLayer) -> None:
        layer.state = FeatureState()

    def _register_hooks(self) -> None:
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._forward_hook(layer)))
        self._handles.append(register_optimizer_step_pre_hook(self._remember_optimizer))

    def _remember_optimizer(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        """Find the optimizers that step our weights, to re-map their momentum on a refresh."""
        if any(ref() is optimizer for ref in self._optimizers):
            return
        ours = {id(layer.module.weight) for layer in self.layers}
        if any(id(p) in ours for group in optimizer.param_groups for p in group["params"]):
            self._optimizers.append(weakref.ref(optimizer))

    # ------------------------------------------------------------------------------ forward
    def _forward_hook(self, layer: WhitenedLayer):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            if module.training and torch.is_grad_enabled():
                if self._collect:
                    with self._timed("stats"):
                        gen = self.generator(x.device)
                        layer.stats.accumulate(layer.adapter.rows(x, self.stats_max_rows, gen))
                    self._commit([layer.group])
                step = self._step
                due = step >= self.start_step and layer.stats.fed
                due = due and (step % self.inverse_every == 0 or layer.refreshes == 0)
                if due and self._refreshed_at.get(layer.name) != step:
                    self._refreshed_at[layer.name] = step
                    with self._timed("decomposition"), torch.no_grad():
                        self._refresh(layer)
                    layer.refreshes += 1
            if feature_state(layer).p is None:
                return output
            with self._timed("transform"):
                return self._whitened_forward(layer, x)

        return hook

    def _whitened_forward(self, layer: WhitenedLayer, x: Tensor) -> Tensor:
        adapter, module = layer.adapter, layer.module
        state = feature_state(layer)
        assert state.p is not None  # the hook calls this only once P exists
        rows = adapter.rows(x)  # (N, G, M)
        p = state.p.to(x.dtype)
        if state.mu is not None:
            rows = rows - state.mu.to(x.dtype)
        white = torch.einsum("ngm,gkm->ngk", rows, p)
        w = adapter.weight_matrix(cast(Tensor, module.weight))  # (G, S_g, M)
        y = torch.einsum("ngk,gsk->ngs", white, w).reshape(rows.shape[0], -1)
        if module.bias is not None:
            y = y + cast(Tensor, module.bias)
        return adapter.output_from_rows(y, x)

    # ------------------------------------------------------------------------------ refresh
    def _refresh(self, layer: WhitenedLayer) -> None:
        """``P = sqrt(c) L^-1`` from the Cholesky factor ``R + eps I = L L^T``: ``P^T P`` is the
        same ``c (R + eps I)^-1`` as ``evd``'s, which is all the equivalence needs (any P with that
        product whitens; the rotation of the whitened coordinates is immaterial to SGD)."""
        cov, mean = layer.stats.cov, layer.stats.mean
        assert cov is not None and mean is not None  # refreshes follow the first statistics
        damping = self.damping(layer)
        factor = damped_cholesky(cov, damping)
        if factor is None:
            self._failed[layer.name] = self._failed.get(layer.name, 0) + 1
            return
        m = layer.adapter.dim
        scale = torch.ones_like(damping)
        if self.normalize:
            scale = (cov.diagonal(dim1=-2, dim2=-1).sum(-1) + m * damping) / m
        root = scale.to(factor.dtype).sqrt()[:, None, None]
        eye = torch.eye(m, dtype=factor.dtype, device=factor.device).expand_as(factor)
        l_inv = torch.linalg.solve_triangular(factor, eye, upper=False)
        dtype = cov.dtype
        p_new = (root * l_inv).to(dtype)
        p_inv_new = (factor / root).to(dtype)
        mu_new = mean.clone() if (layer.has_bias and self.center) else None
        self._reparametrise(layer, p_new, p_inv_new, mu_new)
        if self.condition_every and layer.refreshes % self.condition_every == 0:
            with self._timed("logging"):
                decomposed = self.decompose(layer)
                if decomposed is not None:
                    evals, _, damping = decomposed
                    raw = evals - damping.to(evals.dtype)[:, None]
                    layer.kappa_r = condition_number(raw)
                    layer.kappa_white = condition_number(raw.clamp_min(0.0) / evals)

    def failure_counts(self) -> dict[str, tuple[int, int]]:
        """Per layer: ``(0, failed)``; ``feature``'s Cholesky reads its outcome on the host, so a
        float64 rescue is not told apart (the reference algorithm, not the shipped one)."""
        return {name: (0, n) for name, n in self._failed.items()}

    def _to_plain(self, layer: WhitenedLayer, w_tilde: Tensor) -> Tensor:
        """``W~ P`` as ``(G, S_g, M)`` in the preconditioner's dtype."""
        assert layer.stats.cov is not None  # reparametrised only once statistics exist
        w = layer.adapter.weight_matrix(w_tilde).to(layer.stats.cov.dtype)
        p = feature_state(layer).p
        return w if p is None else w @ p

    def _reparametrise(
        self, layer: WhitenedLayer, p_new: Tensor | None, p_inv_new: Tensor | None, mu_new
    ) -> None:
        """Switch to new whitening coordinates without changing the function or the SGD path."""
        module = layer.module
        mu_old = feature_state(layer).mu
        dmu = None
        if module.bias is not None and (mu_old is not None or mu_new is not None):
            assert layer.stats.mean is not None
            zero = torch.zeros_like(layer.stats.mean)
            dmu = (zero if mu_new is None else mu_new) - (zero if mu_old is None else mu_old)

        def remap(w_like: Tensor, b_like: Tensor | None) -> None:
            plain = self._to_plain(layer, w_like)
            if b_like is not None and dmu is not None:
                shift = (plain @ dmu.unsqueeze(-1))[..., 0].reshape(b_like.shape)
                b_like.add_(shift.to(b_like.dtype))
            new = plain if p_inv_new is None else plain @ p_inv_new
            w_like.copy_(new.reshape(w_like.shape).to(w_like.dtype))

        with torch.no_grad():
            bias = cast(Tensor | None, module.bias)
            remap(cast(Tensor, module.weight).data, None if bias is None else bias.data)
            for ref in self._optimizers:
                opt = ref()
                if opt is None:
                    continue
                w_buf = opt.state.get(module.weight, {}).get("momentum_buffer")
                if w_buf is None:
                    continue
                b_buf = None
                if module.bias is not None:
                    b_buf = opt.state.get(module.bias, {}).get("momentum_buffer")
                remap(w_buf, b_buf)
        layer.state = FeatureState(p=p_new, p_inv=p_inv_new, mu=mu_new)

    def detach(self) -> None:
        """Put the ordinary weights ``W = W~ P`` (and their momentum) back into the model."""
        for layer in self.layers:
            if feature_state(layer).p is not None:
                self._reparametrise(layer, None, None, None)
        super().detach()
        self._optimizers = []
