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
