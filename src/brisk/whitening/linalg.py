"""Linear algebra shared by the whitening algorithms: damped decompositions and condition numbers.

Kept apart from the per-layer framework (``layers.py``) so that the algebra can be read, tested and
benchmarked on plain tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def condition_number(evals: Tensor) -> float:
    """Largest condition number over groups, finite: eigenvalues below ``eps64 * max`` count as that.

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


def inverse_from_cholesky(factor: Tensor) -> Tensor:
    """``(L L^T)^-1`` per group from the lower factor (two triangular solves, no eigenvalues)."""
    return torch.cholesky_inverse(factor)
