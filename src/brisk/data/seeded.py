"""Augmentation whose randomness depends only on (seed, epoch, sample index).

That makes a run's data stream independent of the number of DataLoader workers and of where a run
was interrupted: a resumed run sees exactly the crops and flips an uninterrupted run would have
seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``base[i]``'s input under a generator seeded by (seed, epoch, i)."""

    def __init__(
        self, base: Dataset, transform: Callable[[Any], Any] | None, seed: int = 0
    ) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop at each epoch so the augmentation seeds change between epochs."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        x, y = self.base[index]
        if self.transform is None:
            return x, y
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: the transforms run on the CPU, and torch.manual_seed would
            # also queue a CUDA seeding (with a captured stack) per item, 5 ms each in a CUDA build
            # without a GPU, which made loading cost more than a ResNet-20 step
            torch.default_generator.manual_seed(
                hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF
            )
            return self.transform(x), y
