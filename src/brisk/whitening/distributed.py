"""Spreading preconditioner refreshes over data-parallel ranks.

Statistics are all-reduced before a refresh, so every rank holds the same covariances and could
derive the same preconditioners; instead each covariance group (every block of one size ``M``,
refreshed by one batched call) is refreshed on one rank and its buffers are broadcast.  Groups go
to ranks by the longest-processing-time greedy rule that kfac-pytorch uses for its factors: the
most expensive first, each to the least loaded rank, with the cost of a group taken as
``blocks * M^3``.  The owner computes exactly what a single process would, so a data-parallel run
stays equal to a single-process one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from torch import Tensor

__all__ = ["assign_by_cost", "broadcast_from_owners"]


def assign_by_cost(costs: Sequence[float], world: int) -> list[int]:
    """Rank of each item: descending cost, each to the least loaded rank (ties: lowest rank).

    Deterministic, so every rank computes the same assignment without communicating.
    """
    loads = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return owners


def slab_runs(size: int, parts: int) -> list[slice]:
    """``size`` slabs cut into at most ``parts`` consecutive runs of near-equal length."""
    parts = max(1, min(parts, size))
    bounds = [size * i // parts for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def broadcast_from_owners(buffers: Sequence[Sequence[Tensor]], owners: Sequence[int]) -> None:
    """Send each item's tensors from its owner rank to every other rank, in place."""
    for tensors, owner in zip(buffers, owners):
        for tensor in tensors:
            dist.broadcast(tensor, src=owner)
