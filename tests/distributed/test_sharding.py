"""Fast, in-process checks of what makes data-parallel runs match single-process ones."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
from torch.utils.data import TensorDataset

from brisk.run import distributed
from brisk.run.distributed import DistInfo, collective_timeout, maybe_inject_fault
from brisk.trainer.data_loading import EvalShard, ResumableSampler


def _dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def _global_batches(n: int, world: int, global_batch: int, epoch: int) -> list[list[int]]:
    """The union over ranks of every rank's k-th batch, as the ranks would draw them."""
    per_rank = global_batch // world
    shards = []
    for rank in range(world):
        sampler = ResumableSampler(_dataset(n), DistInfo(rank, world), seed=7)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    steps = len(shards[0]) // per_rank
    return [
        sorted(i for shard in shards for i in shard[k * per_rank : (k + 1) * per_rank])
        for k in range(steps)
    ]


@pytest.mark.parametrize("n", [101, 128, 131])
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_together_train_on_the_single_process_batches(n: int, world: int) -> None:
    for epoch in (0, 3):
        single = _global_batches(n, 1, 16, epoch)
        assert len(single) == n // 16
        assert _global_batches(n, world, 16, epoch) == single


def test_resume_offset_continues_the_same_samples() -> None:
    full = ResumableSampler(_dataset(50), DistInfo(1, 2), seed=3)
    full.set_epoch(2)
    resumed = ResumableSampler(_dataset(50), DistInfo(1, 2), seed=3)
    resumed.set_epoch(2)
    resumed.start_index = 10
    assert list(resumed) == list(full)[10:] and len(resumed) == len(full) - 10


@pytest.mark.parametrize("n", [1, 7, 359])
def test_eval_shards_cover_every_sample_exactly_once(n: int) -> None:
    seen = sorted(i for rank in range(3) for i in EvalShard(_dataset(n), DistInfo(rank, 3)))
    assert seen == list(range(n))


def test_collective_timeout_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert collective_timeout() == timedelta(seconds=distributed.DEFAULT_TIMEOUT_S)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert collective_timeout() == timedelta(seconds=2.5)
    for bad in ("soon", "0"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
            collective_timeout()


def test_fault_fires_once_on_the_chosen_rank_only(monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[int] = []
    monkeypatch.setattr(distributed.os, "kill", lambda pid, sig: kills.append(pid))
    monkeypatch.setenv(distributed.FAULT_STEP_ENV, "5")
    monkeypatch.setenv(distributed.FAULT_RANK_ENV, "1")
    monkeypatch.delenv(distributed.RESTART_COUNT_ENV, raising=False)
    maybe_inject_fault(4, rank=1)
    maybe_inject_fault(5, rank=0)
    assert kills == []
    maybe_inject_fault(5, rank=1)
    assert kills == [os.getpid()]
    monkeypatch.setenv(distributed.RESTART_COUNT_ENV, "1")  # the restarted group runs through
    maybe_inject_fault(5, rank=1)
    assert kills == [os.getpid()]


def test_a_single_process_joins_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_distributed(torch.device("cpu"))
    assert info == DistInfo() and not torch.distributed.is_initialized()
