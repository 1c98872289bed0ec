"""Linear algebra shared by the whitening algorithms: damped decompositions and condition numbers.

Kept apart from the orchestrator (``orchestrator.py``) so that the algebra can be read, tested and
benchmarked on plain tensors.  What the training step calls (:func:`damped_inverse`) decides every
fallback on the device; :func:`damped_eigh`, :func:`damped_cholesky` and
:func:`condition_number` read their results on the host and serve logging, the ``clip`` ablation
and ``feature`` (the reference algorithm) only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def condition_number(evals: Tensor) -> float:
    """Largest condition number over groups, finite: eigenvalues below ``eps64 * max`` count as
    that.

    A rank-deficient covariance (fewer samples than features) then reports about 4.5e15 rather
    than inf or a negative number, which keeps the logs and plots usable.
    """
    evals = evals.to(torch.float64)
    top = evals.max(-1).values.clamp_min(1e-300)
    low = torch.maximum(evals.min(-1).values, top * torch.finfo(torch.float64).eps)
    return float((top / low).max())


def damped_eigh(cov: Tensor, damping: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """Eigen-decomposition of ``R + damping I`` per group, or None when it fails or is not finite.

    A float32 failure is retried in float64 before giving up (ill-conditioned covariances are the
    usual cause); the caller then keeps its previous preconditioner.
    """
    for dt in (dtype, torch.float64) if dtype != torch.float64 else (dtype,):
        r = cov.to(dt)
        eye = torch.eye(r.shape[-1], dtype=dt, device=r.device)
        r = r + damping.to(dt)[:, None, None] * eye
        try:
            evals, evecs = torch.linalg.eigh(r)
        except RuntimeError:
            continue
        if torch.isfinite(evals).all() and torch.isfinite(evecs).all() and (evals > 0).all():
            return evals, evecs
    return None


def damped_cholesky(cov: Tensor, damping: Tensor) -> Tensor | None:
    """Lower Cholesky factor of ``R + damping I`` per group, or None when it fails.

    The cheapest exact route to a damped inverse (``M^3 / 3`` for the factor, against about
    ``9 M^3`` for a symmetric eigen-decomposition), so it is tried in the statistics' own dtype
    first (float32 runs at twice the speed and, on a GPU, many times that) and retried in float64
    only when the factorisation breaks down or is not finite.
    """
    dtypes = (cov.dtype,) if cov.dtype == torch.float64 else (cov.dtype, torch.float64)
    for dt in dtypes:
        r = cov.to(dt)
        eye = torch.eye(r.shape[-1], dtype=dt, device=r.device)
        r = r + damping.to(dt)[:, None, None] * eye
        factor, info = torch.linalg.cholesky_ex(r)
        # one host read per refresh (not per step): a failed factor must not reach the gradients
        if bool((info == 0).all() & torch.isfinite(factor).all()):
            return factor
    return None


def all_finite(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per item: whether every entry over ``dims`` is finite (its sum is, unless it overflows,
    which is as unusable), as a device mask in two cheap operators."""
    total = x.sum(dims)
    return (total - total) == 0  # inf - inf and nan are nan


def damped_inverse(cov: Tensor, damping: Tensor, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``c (R + damping I)^-1`` for a stack ``(N, M, M)``, with no host synchronisation.

    Returns ``(q, first, ok)``: ``first`` marks the covariances whose factor succeeded in their
    own dtype, ``ok`` those with a usable inverse (possibly from the float64 retry, which is always
    computed and chosen by a mask: a branch would have to read the outcome on the host).  Where
    ``ok`` is False, ``q`` is meaningless and the caller keeps its previous preconditioner.
    ``c`` is the mean eigenvalue ``trace(R + damping I) / M`` when ``normalize`` (it needs no
    eigenvalues), else 1.  The inverse is ``L^-T L^-1`` from one triangular solve
    (``cholesky_inverse`` checks its input on the host).
    """
    m = cov.shape[-1]
    damped = cov.clone()
    damped.diagonal(dim1=-2, dim2=-1).add_(damping.to(cov.dtype)[:, None])
    # the statistics are finite (non-finite batches are rejected), so info == 0 is a usable factor
    factor, info = torch.linalg.cholesky_ex(damped)
    first = info == 0
    ok = first
    if cov.dtype != torch.float64:
        wide, info64 = torch.linalg.cholesky_ex(damped.double())
        factor = torch.where(first[:, None, None], factor, wide.to(cov.dtype))
        ok = first | (info64 == 0)
    eye = torch.eye(m, dtype=cov.dtype, device=cov.device).expand_as(cov)
    factor = torch.where(ok[:, None, None], factor, eye)
    l_inv = torch.linalg.solve_triangular(factor, eye, upper=False)
    q = l_inv.transpose(-1, -2) @ l_inv
    if normalize:
        mean = (cov.diagonal(dim1=-2, dim2=-1).sum(-1) + m * damping.to(cov.dtype)) / m
        q = q * mean[:, None, None]
    q = 0.5 * (q + q.transpose(-1, -2))  # exactly symmetric: stored as a triangle
    ok = ok & all_finite(q, (-2, -1))
    return q, first, ok
