"""Seeded augmentation: each item's randomness is a function of (seed, epoch, index) alone."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from brisk.data.seeded import SeededTransformDataset

AUGMENT = v2.Compose([v2.RandomCrop(8, padding=2), v2.RandomHorizontalFlip()])


def _dataset(seed: int = 3) -> SeededTransformDataset:
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).reshape(4, 3, 8, 8)
    return SeededTransformDataset(TensorDataset(images, torch.arange(4)), AUGMENT, seed=seed)


def test_items_repeat_per_seed_and_epoch_and_leave_the_global_generator_alone() -> None:
    ds = _dataset()
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = [ds[i][0] for i in range(4)]
    assert torch.equal(torch.random.get_rng_state(), before)  # the loop's own stream is untouched
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))  # in any order, any worker
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))  # new crops each epoch


def test_the_crops_are_those_of_the_cpu_generator_seeded_by_seed_epoch_index() -> None:
    ds = _dataset()
    ds.set_epoch(2)
    x = ds.base[1][0]
    torch.manual_seed(hash((3, 2, 1)) & 0x7FFF_FFFF_FFFF_FFFF)
    assert torch.equal(ds[1][0], AUGMENT(x))


def test_an_item_does_not_seed_the_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.manual_seed`` also queues a CUDA seeding with a captured stack trace: in a CUDA
    build that costs about 5 ms an item, more than the rest of loading a CIFAR batch."""

    def refuse(*_args: object) -> None:
        raise AssertionError("per-item seeding reached torch.cuda")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed", refuse)
    _dataset()[0]
