"""``whitening=recursive``: refine the preconditioner at every refresh with matrix products only.

The paper (arXiv 2010.01546, contribution 2) states only the properties of its sub-optimal
recursive algorithm: it reduces the condition number of the input covariance recursively and costs
less than a decomposition.  What is implemented here is our reconstruction with those properties,
built for accelerators: a **warm-started Newton-Schulz iteration** on the damped, trace-normalised
statistics, batched over every covariance of one size.

* ``A = (R + eps I) / c`` with ``c = trace(R + eps I) / M``: the damped covariance with mean
  eigenvalue 1, so its inverse ``A^-1 = c (R + eps I)^-1`` is exactly ``evd``'s normalised
  preconditioner.  The stored ``Q`` is the running estimate of ``A^-1``.
* One step is ``Q <- Q (2I - A Q) = 2Q - Q A Q`` (two batched products, ``M^3`` each, no
  factorisation, no host read).  It squares the residual ``I - A Q``: each step doubles the number
  of correct digits, and a few steps per refresh keep ``Q`` on a slowly moving ``R``.
* The iteration converges when every eigenvalue of ``A Q`` lies in ``(0, 2)``.  After an abrupt
  change of ``R`` the previous ``Q`` may violate that, so each refresh bounds the largest
  eigenvalue of ``A Q`` by the largest row sum of ``|A Q|`` (a product the first step needs anyway)
  and, where the bound reaches 2, divides ``Q`` by it: the dominant directions then start at most
  at 1 and the others converge from below.  Before the first refresh ``Q = I``, which the same rule
  scales to a safe start; from there a covariance of condition number kappa needs about
  ``log2(kappa) + 4`` steps in one run, so a group's first refresh takes that many
  (:meth:`RecursiveWhitening.first_steps`).  Two steps per refresh would not get there: while
  ``A Q`` is far from ``I`` its row-sum bound exceeds 2 although its eigenvalues do not, and each
  refresh would scale ``Q`` down again (for a 576 x 576 covariance of condition number 190, 28
  steps' worth of two-step refreshes against 11 steps in one run).
* Where the result is not finite (or the layer has no accepted statistics) the previous ``Q`` is
  kept by a device mask.

Many steps tend to ``evd``'s exact damped inverse (tested), so ``evd``'s damping suits it.  Per
layer the state is ``Q`` alone; a refresh needs three ``M x M`` temporaries.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from brisk.whitening.covariance import CovarianceGroup
from brisk.whitening.gradient import GradientWhitening
from brisk.whitening.linalg import all_finite, condition_number
from brisk.whitening.orchestrator import WhitenedLayer
from brisk.whitening.settings import RecursiveSettings
from brisk.whitening.state import RecursiveState

__all__ = ["RecursiveWhitening", "newton_schulz", "normalised"]


def normalised(cov: Tensor, damping: Tensor, trace: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(A, c)``: ``A = (R + damping I) / c`` with mean eigenvalue 1, ``c`` the mean eigenvalue
    ``trace(R) / M + damping`` (``trace``: the running trace the statistics keep, or computed)."""
    m = cov.shape[-1]
    damping = damping.to(cov.dtype)
    if trace is None:
        trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    c = torch.add(damping, trace, alpha=1.0 / m)
    a = cov / c[:, None, None]
    a.diagonal(dim1=-2, dim2=-1).add_((damping / c)[:, None])
    return a, c


def newton_schulz(a: Tensor, q: Tensor, steps: int) -> Tensor:
    """``steps`` Newton-Schulz steps towards ``A^-1`` from ``q`` (batched, out of place).

    The step converges when every eigenvalue of ``A Q`` lies in ``(0, 2)``; the largest row sum
    of ``|A Q|`` bounds them from above, so where it reaches 2 ``Q`` is first divided by it (the
    dominant directions then start at most at 1, the rest converge from below).  Returns the new
    ``Q``, exactly symmetric.
    """
    aq = torch.bmm(a, q)
    bound = aq.abs().sum(-1).amax(-1)
    scale = torch.where(bound >= 2.0, 1.0 / bound, 1.0)[:, None, None]
    q, aq = q * scale, aq * scale
    for i in range(steps):
        if i:
            aq = torch.bmm(a, q)
        q = torch.baddbmm(q, q, aq, beta=2.0, alpha=-1.0)  # 2Q - Q A Q
    return 0.5 * (q + q.transpose(-1, -2))


class RecursiveWhitening(GradientWhitening):
    """Gradient-transform whitening refined by warm-started Newton-Schulz steps (matmul only)."""

    name = "recursive"

    settings_type = RecursiveSettings
    state_type = RecursiveState
    steps: int
    condition_every: int
    _shared_buffers = ("iterate",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timers.setdefault("logging", 0.0)

    def _init_group(self, group: CovarianceGroup) -> None:
        b = group.buffers
        if not self.normalize:  # the iterate A^-1, kept apart from the unnormalised Q
            b["iterate"] = b["q"].clone()

    def first_steps(self, dim: int) -> int:
        """Newton-Schulz steps of a group's first refresh, from the identity: enough for any
        covariance its damping allows, ``log2`` of the largest condition number ``M / eps + 1``
        plus 4 for the quadratic phase (at most 40).

        Spread over ``steps`` per refresh, the climb from the identity would stall: until ``A Q``
        is near ``I`` its row-sum bound exceeds 2, so every refresh would scale ``Q`` down again.
        """
        rel = max(self.eps, self.eps_min, 1e-12)
        return max(self.steps, min(40, math.ceil(math.log2(dim / rel + 1.0)) + 4))

    def _refresh_group(self, group: CovarianceGroup, slabs: slice) -> None:
        cov, trace = group.buffers["cov"][slabs], group.buffers["trace"][slabs]
        a, c = normalised(cov, self.group_damping(trace, group.dim), trace)
        current = group.buffers["q" if self.normalize else "iterate"][slabs]
        # a host decision from host counters: the group's first refresh climbs from the identity
        cold = all(layer.refreshes == 0 for layer in self.layers if layer.group is group)
        q = newton_schulz(a, current, self.first_steps(group.dim) if cold else self.steps)
        ok = all_finite(q, (-2, -1))
        if not self.normalize:
            fed = self._has_statistics(group)[slabs]
            torch.where((ok & fed)[:, None, None], q, current, out=current)
            q = q / c[:, None, None]
        self._accept(group, slabs, q, None, ok)

    def _condition_numbers(self, layer: WhitenedLayer) -> tuple[float, float] | None:
        """kappa(R) and kappa(Q R) from eigenvalues; None while Q is not positive definite."""
        q, cov = layer.state.q, layer.stats.cov  # type: ignore[attr-defined]
        if q is None or cov is None:
            return None
        r = cov.to(torch.float64)
        root, info = torch.linalg.cholesky_ex(q.to(torch.float64))
        if int(info) != 0:  # a logging read: a preconditioner that is not yet SPD is skipped
            return None
        white = root.transpose(-1, -2) @ r @ root
        return condition_number(torch.linalg.eigvalsh(r)), condition_number(
            torch.linalg.eigvalsh(0.5 * (white + white.transpose(-1, -2)))
        )
