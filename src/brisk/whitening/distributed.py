"""Spreading preconditioner refreshes over data-parallel ranks.

Statistics are all-reduced before a refresh, so every rank holds the same covariances and could
derive the same preconditioners; instead each layer due for a refresh is decomposed on one rank and
the result is broadcast.  Layers go to ranks by the longest-processing-time greedy rule that
kfac-pytorch uses for its factors: the most expensive first, each to the least loaded rank, with the
cost of a layer taken as ``groups * M^3``.  The owner computes exactly what a single process would,
so a data-parallel run stays equal to a single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["assign_by_cost", "share_from_owners"]


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


def share_from_owners(
    items: Sequence[Any],
    owners: Sequence[int],
    pack: Callable[[Any], dict[str, Any]],
    unpack: Callable[[Any, dict[str, Any]], None],
    device: torch.device,
) -> None:
    """Send each item's ``pack()`` from its owner to every other rank, which ``unpack()``s it.

    A packed item is a flat dict of tensors, numbers, None or strings.  Shapes and plain values
    travel in one ``all_gather_object``; tensors in one broadcast per item and dtype, so memory
    grows by one item's tensors at most.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {i: pack(items[i]) for i, o in enumerate(owners) if o == rank}
    layout = {
        i: {
            k: (("tensor", tuple(v.shape), str(v.dtype)) if isinstance(v, Tensor) else ("value", v))
            for k, v in packed.items()
        }
        for i, packed in mine.items()
    }
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, layout)
    for src in range(world):
        # one item at a time, so that only one item's tensors are ever held twice
        for i, keys in sorted(gathered[src].items()):
            packed = {k: spec[1] for k, spec in keys.items() if spec[0] == "value"}
            by_dtype: dict[str, list[str]] = {}
            for k, spec in keys.items():
                if spec[0] == "tensor":
                    by_dtype.setdefault(spec[2], []).append(k)
            for dtype_name, names in sorted(by_dtype.items()):
                shapes = [keys[k][1] for k in names]
                if src == rank:
                    flat = torch.cat([mine[i][k].reshape(-1).to(device) for k in names])
                else:
                    dtype = getattr(torch, dtype_name.removeprefix("torch."))
                    flat = torch.empty(sum(map(_numel, shapes)), dtype=dtype, device=device)
                dist.broadcast(flat, src=src)
                if src != rank:
                    parts = flat.split([_numel(shape) for shape in shapes])
                    packed.update({k: p.view(shape) for k, p, shape in zip(names, parts, shapes)})
            if src != rank:
                unpack(items[i], packed)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
