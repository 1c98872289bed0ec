"""Seeded index splits, identical on every machine and rank."""

from __future__ import annotations

import torch


def fixed_split(n: int, sizes: list[int], seed: int) -> list[torch.Tensor]:
    """Partition ``range(n)`` into consecutive chunks of a seeded permutation."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} exceed the {n} available samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for size in sizes:
        out.append(perm[start : start + size].sort().values)
        start += size
    return out
