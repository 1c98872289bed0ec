"""``whitening=recursive``: lower the input condition number a little per update with O(M^2) work.

The paper (arXiv 2010.01546, contribution 2) states only the properties of its sub-optimal
recursive algorithm: it reduces the condition number of the input covariance recursively and costs
M times less than an eigen-decomposition.  What is implemented here is our reconstruction with
exactly those properties, *rank-1 eigenvalue equalisation*:

* Keep a transform ``T`` per layer (and group), the whitened covariance ``R~ = T R T^T`` and the
  preconditioner ``Q = T^T T``; start from ``T = I``.
* ``R~`` is tracked directly: statistics rows are multiplied by ``T`` before their covariance is
  accumulated (``N M^2``, the same order as gathering plain statistics), so ``R~`` is always the
  running covariance *as seen through the current T* and no ``T R T^T`` product (``M^3``) is formed.
* Each update runs ``steps`` rank-1 steps.  A step finds the top eigenpair ``(u, l)`` of ``A`` (below)
  by ``power_iters`` power iterations (O(M^2) each) and applies ``H = I + a u u^T`` with
  ``a = sqrt(l_ref / l) - 1``, ``l_ref = trace(A)/M``: ``H`` maps the largest eigenvalue onto the mean
  and leaves the others unchanged, so ``kappa(T R T^T)`` never increases and tends to 1.  ``R~``,
  ``T`` and ``Q`` get rank-1/rank-2 updates (O(M^2)).
* The matrix equalised is the damped ``A = T (R + eps I) T^T = R~ + eps T T^T`` (``T T^T`` is kept
  with the same rank-2 updates), so many steps tend to a multiple of exact damped whitening and a
  singular ``R`` cannot pull the other eigenvalues towards zero.  Only large directions are shrunk
  (``0 < 1 + a <= 1``): ``Q`` never amplifies a noisy, low-variance direction.
* The gradient is transformed like ``evd``'s: ``grad_W <- (grad_W - g_b mu^T) c Q``, with
  ``c = trace(R + eps I) / trace(A)`` when ``normalize`` so that the preconditioned step keeps SGD's scale.

Per-layer condition numbers cost an ``M^3`` eigen-decomposition, so they are computed only on every
``condition_every``-th update (0 disables them); the algorithm itself never needs them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brisk.whitening.gradient import GradientWhitening
from brisk.whitening.layers import WhitenedLayer
from brisk.whitening.linalg import condition_number
from brisk.whitening.settings import RecursiveSettings

__all__ = ["RecursiveWhitening", "equalise_top_eigenvalue"]


def _top_eigenpair(rt: Tensor, start: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Power iteration on every group at once; returns unit vectors ``(G, M)`` and Rayleigh values."""
    v = start / start.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    for _ in range(iters):
        v = (rt @ v.unsqueeze(-1))[..., 0]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    lam = (v * (rt @ v.unsqueeze(-1))[..., 0]).sum(-1)
    return v, lam


def _sandwich(mat: Tensor, u: Tensor, a: Tensor) -> None:
    """``mat <- H mat H`` for ``H = I + a u u^T`` as one in-place rank-2 product (O(M^2)).

    ``H R H = R + u v^T + v u^T`` with ``v = a R u + (a^2 u^T R u / 2) u``.
    """
    w = (mat @ u.unsqueeze(-1))[..., 0]
    uw = (u * w).sum(-1, keepdim=True)
    v = a.unsqueeze(-1) * w + 0.5 * (a * a).unsqueeze(-1) * uw * u
    mat.baddbmm_(torch.stack((u, v), -1), torch.stack((v, u), -2))


def equalise_top_eigenvalue(
    rt: Tensor,
    t: Tensor,
    q: Tensor,
    power_iters: int,
    damping: Tensor | None = None,
    tt: Tensor | None = None,
) -> Tensor:
    """One rank-1 step in place on ``R~ = T R T^T``, ``T``, ``Q = T^T T`` (and ``T T^T``); returns ``u``.

    The step equalises the damped whitened covariance ``A = T (R + damping I) T^T = R~ + damping T T^T``
    (``A = R~`` without damping): damping bounds the eigenvalues of ``A`` away from zero, so a
    singular R (fewer samples than features) cannot drag the others towards zero, and the limit of
    many steps is a multiple of exact damped whitening.  Groups whose ``A`` is zero, or whose top
    eigenvalue is already at the mean, are left unchanged.
    """
    m = rt.shape[-1]
    a_mat = rt if damping is None else rt + damping[:, None, None] * tt
    diag = a_mat.diagonal(dim1=-2, dim2=-1)
    col = diag.argmax(-1)
    # warm start: the column with the largest diagonal, a cheap guess at the dominant direction
    start = a_mat.gather(-1, col.view(-1, 1, 1).expand(-1, m, 1))[..., 0]
    start = start + 1e-3 * diag.max(-1, keepdim=True).values.clamp_min(1e-30)
    u, lam = _top_eigenpair(a_mat, start, power_iters)
    lam_ref = diag.sum(-1) / m
    ok = (lam > lam_ref) & (lam > 0) & torch.isfinite(lam)
    a = torch.where(ok, (lam_ref / lam.clamp_min(1e-300)).sqrt() - 1.0, torch.zeros_like(lam))
    _sandwich(rt, u, a)
    if tt is not None:
        _sandwich(tt, u, a)
    tu = (t.transpose(-1, -2) @ u.unsqueeze(-1))[..., 0]  # T^T u
    t.baddbmm_((a.unsqueeze(-1) * u).unsqueeze(-1), tu.unsqueeze(-2))
    q.baddbmm_((((1 + a) ** 2 - 1).unsqueeze(-1) * tu).unsqueeze(-1), tu.unsqueeze(-2))
    return u


class RecursiveWhitening(GradientWhitening):
    """Gradient-transform whitening with an O(M^2)-per-step condition-number reduction."""

    name = "recursive"

    settings_type = RecursiveSettings
    steps: int
    power_iters: int
    condition_every: int

    def _init_layer(self, layer: WhitenedLayer) -> None:
        g, m = layer.adapter.groups, layer.adapter.dim
        eye = torch.eye(m).expand(g, m, m).clone()
        layer.state.update(T=eye, TT=eye.clone(), Qraw=eye.clone(), Q=None, mu=None)

    def _ensure_device(self, layer: WhitenedLayer) -> None:
        """Move T and Q to the statistics' device and dtype the first time statistics exist."""
        cov = layer.stats.cov
        for key in ("T", "TT", "Qraw"):
            layer.state[key] = layer.state[key].to(device=cov.device, dtype=cov.dtype)
        layer.stats.transform = layer.state["T"]

    def _refresh(self, layer: WhitenedLayer) -> None:
        self._ensure_device(layer)
        rt, t, tt, q = (layer.stats.cov, layer.state["T"], layer.state["TT"], layer.state["Qraw"])
        damping = self.damping(layer).to(rt.dtype)
        backup = [m.clone() for m in (rt, t, tt, q)]
        for _ in range(self.steps):
            equalise_top_eigenvalue(rt, t, q, self.power_iters, damping, tt)
        if not all(torch.isfinite(m).all() for m in (rt, t, tt, q)):
            for m, old in zip((rt, t, tt, q), backup):
                m.copy_(old)
            self.fallbacks += 1
            if layer.state["Q"] is not None:
                return
        scale = torch.ones_like(layer.stats.trace)
        if self.normalize:
            # trace of T (R + damping I) T^T against that of R + damping I
            m = layer.adapter.dim
            tr_white = (rt + damping[:, None, None] * tt).diagonal(dim1=-2, dim2=-1).sum(-1)
            tr_raw = layer.stats.trace + m * damping
            scale = torch.where(tr_white > 0, tr_raw / tr_white.clamp_min(1e-300), scale)
        layer.state["Q"] = q * scale[:, None, None]
        if self.condition_every and layer.refreshes % self.condition_every == 0:
            self._condition_numbers(layer)

    def _condition_numbers(self, layer: WhitenedLayer) -> None:
        """kappa(T R T^T) and kappa(R) from ``T^-1 R~ T^-T`` (M^3, logging only).

        As for ``evd``, the whitened covariance is the *undamped* R seen through the preconditioner.
        """
        rt = layer.stats.cov.to(torch.float64)
        t = layer.state["T"].to(torch.float64)
        r = torch.linalg.solve(t, torch.linalg.solve(t, rt).transpose(-1, -2))
        layer.kappa_white = condition_number(torch.linalg.eigvalsh(rt))
        layer.kappa_r = condition_number(torch.linalg.eigvalsh(0.5 * (r + r.transpose(-1, -2))))

    def _load_layer_state(self, layer: WhitenedLayer, state: dict[str, Any]) -> None:
        super()._load_layer_state(layer, state)
        if layer.stats.cov is not None:
            self._ensure_device(layer)
