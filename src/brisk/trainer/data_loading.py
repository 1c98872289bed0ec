"""Samplers and loaders that make a run reproducible across resumes, worker counts and ranks."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from brisk.run.distributed import DistInfo
from brisk.run.signals import STOP_SIGNALS


class ResumableSampler(DistributedSampler):
    """DistributedSampler (one seeded permutation per epoch, sharded by rank) that can start
    mid-epoch.

    Used in single-process runs too (num_replicas=1), so one code path serves both; ``start_index``
    skips the samples a resumed run already trained on without loading them.

    Rank r takes positions r, r+W, r+2W, ... of the epoch's permutation, which does not depend on W.
    With a per-rank batch of B/W, step k of every rank therefore draws from positions [kB, (k+1)B)
    of the permutation: together the ranks train on exactly the global batch a single process would.
    ``drop_last`` keeps it that way: the tail that does not split evenly is dropped rather than
    padded with repeated samples, so the steps per epoch equal ``len(dataset) // batch_size`` for
    any W.
    """

    def __init__(self, dataset: Dataset, dist: DistInfo, seed: int, shuffle: bool = True) -> None:
        super().__init__(
            dataset,
            num_replicas=dist.world_size,
            rank=dist.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class EvalShard(torch.utils.data.Sampler[int]):
    """Rank r evaluates indices r, r+W, r+2W, ...: no padding, so reduced metrics are exact.

    DistributedSampler would pad the last shard with repeated samples so that every rank runs the
    same number of batches; the evaluator only all-reduces sums and counts once at the end, so ranks
    may run different numbers of batches and every sample counts exactly once.
    """

    def __init__(self, dataset: Dataset, dist: DistInfo) -> None:
        self.indices = list(range(dist.rank, len(dataset), dist.world_size))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    sampler: torch.utils.data.Sampler,
    batch_size: int,
    num_workers: int,
    train: bool,
    start_method: str | None = None,
) -> DataLoader:
    """Workers are re-created every epoch (not persistent) so they see the data set's current epoch.

    ``start_method`` (``trainer.worker_start_method``): ``fork`` copies a parent that may hold
    threads (intra-op pools, TensorBoard writers) and can deadlock in rare cases; ``forkserver`` or
    ``spawn`` start clean workers at the price of pickling the data set each epoch. None keeps the
    platform's default.
    """
    context = None
    if num_workers > 0 and start_method:
        try:
            context = multiprocessing.get_context(start_method)
        except ValueError as err:
            raise ValueError(
                f"trainer.worker_start_method={start_method!r}: expected one of "
                f"{multiprocessing.get_all_start_methods()} or null"
            ) from err
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=train,
        pin_memory=torch.cuda.is_available(),
        # kept across epochs only by data sets whose epoch reaches running workers (shared memory)
        persistent_workers=num_workers > 0 and getattr(dataset, "shares_epoch", False),
        multiprocessing_context=context,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )


def ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group, loader workers too. The main process
    decides when to stop (brisk.run.signals) and ends its workers; a worker that died of the
    signal first would turn a clean stop into a "worker exited unexpectedly" error."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def as_batch_dict(batch: Any) -> dict[str, Any]:
    """Data sets yield ``(input, target)`` or dicts; the loop works on dicts."""
    if isinstance(batch, dict):
        return batch
    inputs, target = batch[0], batch[1]
    return {"input": inputs, "target": target}


def to_device(
    batch: dict[str, Any], device: torch.device, memory_format: torch.memory_format | None = None
) -> dict[str, Any]:
    """Move tensors to ``device``; with a channels-last ``memory_format``, image and clip tensors
    follow it (the teacher's RGB clips too), so every convolution runs in the faster layout."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if (
                memory_format is not None
                and value.is_floating_point()
                and value.dim() == _RANK[memory_format]
            ):
                value = value.contiguous(memory_format=memory_format)
        out[key] = value
    return out


_RANK = {torch.channels_last: 4, torch.channels_last_3d: 5}
