"""The loader: uint8 items finished on the device, rgb only for a teacher, key frames kept in the
records, and training randomness that persistent DataLoader workers follow across epochs."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from tests.video.conftest import tiny_shapes
from torch.utils.data import DataLoader

import brisk.config  # noqa: F401  (registers the runner's schemas and resolvers)
from brisk.video import reader as reader_module
from brisk.video.cache import ClipArrays, ClipStore, keyframes_of
from brisk.video.clips import MFNET_MEAN, MFNET_SCALE, CropBox, make_clip_u8, normalise_clip
from brisk.video.datasets import MovingShapesDataModule


def tiny(tmp_path: Path, **kw) -> MovingShapesDataModule:
    return tiny_shapes(tmp_path, val_fraction=0.0, **kw)


def test_device_normalisation_matches_the_float_formulas_within_one_level() -> None:
    """Resizing uint8 in the worker then normalising differs from normalising first by rounding."""
    rng = np.random.default_rng(0)
    arrays = ClipArrays(
        rng.integers(0, 256, (12, 24, 30, 3), dtype=np.uint8),
        rng.integers(0, 256, (11, 24, 30, 3), dtype=np.uint8),
        rng.integers(-30, 30, (11, 24, 30, 2), dtype=np.int8),
    )
    box = CropBox(2, 3, 20, 18, 28, flip=True)
    clip_u8, rgb_u8 = make_clip_u8(arrays, box)
    assert clip_u8.dtype == rgb_u8.dtype == torch.uint8
    assert clip_u8.shape == (5, 12, 28, 28) and rgb_u8.shape == (3, 12, 28, 28)

    def crop(a: np.ndarray) -> torch.Tensor:  # (T, h, w, C) -> float (C, T, h, w), mirrored
        a = a[:, box.y : box.y + box.h, box.x : box.x + box.w, :][:, :, ::-1]
        return torch.from_numpy(a.copy()).permute(3, 0, 1, 2).float()

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)

    mean = torch.tensor(MFNET_MEAN).view(3, 1, 1, 1)
    frames = torch.cat([crop(arrays.rgb)[:, :1], crop(arrays.residual)], dim=1)
    for norm, res_mean in (("mfnet", mean), ("centered", 128.0)):
        x = normalise_clip(clip_u8[None], norm)[0]
        expected = torch.cat(
            [(frames[:, :1] - mean) * MFNET_SCALE, (frames[:, 1:] - res_mean) * MFNET_SCALE], 1
        )
        diff = (x[:3] - resize(expected)).abs()
        assert diff.max() <= MFNET_SCALE * 1.01 and diff.mean() < MFNET_SCALE * 0.3
    motion = normalise_clip(clip_u8, "mfnet")[3:]
    assert motion[:, 0].abs().max() <= 0.5 / 255 + 1e-6  # the I-frame slot: zero motion
    assert motion.min() >= -0.5 and motion.max() <= 0.5
    # the x component is mirrored: an object moving right moves left in the flipped clip
    mirrored = -torch.from_numpy(arrays.motion[0, 2:22, 3:21, 0].astype(np.float32)).mean()
    assert torch.sign(motion[0, 1].mean()) == torch.sign(mirrored)


def test_items_are_uint8_rgb_only_for_a_teacher_and_the_hook_finishes_them(tmp_path) -> None:
    student_only = tiny(tmp_path, teacher_input=None)
    student_only.setup()
    item = student_only.train_dataset()[0]
    assert "rgb" not in item and item["input"].dtype == torch.uint8
    with_teacher = tiny(tmp_path)
    with_teacher.setup()
    batch = next(iter(DataLoader(with_teacher.train_dataset(), batch_size=2)))
    assert batch["rgb"].dtype == torch.uint8
    done = with_teacher.on_device_batch(batch)
    assert done["input"].dtype == torch.float32 and done["rgb"].dtype == torch.float32
    assert torch.equal(done["input"], normalise_clip(batch["input"], "mfnet"))
    assert torch.equal(done["rgb"], batch["rgb"].float() / 255)
    assert torch.equal(with_teacher.train_dataset()[0]["input"], item["input"])
    with pytest.raises(Exception, match="teacher_input"):
        tiny(tmp_path, teacher_input="flow")


def test_a_cold_open_uses_the_recorded_key_frames(tmp_path, monkeypatch) -> None:
    cached = tiny(tmp_path)
    cached.setup()
    live = tiny(tmp_path, cache_clips=False)
    live.setup()
    video = live.test_dataset().videos[0]
    record = live.report.records[video.rel]
    assert video.keyframes == keyframes_of(record) and len(record["keyframe_pts"]) == 3

    def no_demux(path):
        raise AssertionError(f"{path} was demuxed again")

    monkeypatch.setattr(reader_module, "keyframe_index", no_demux)
    store = ClipStore(live.cache)
    arrays = store.load(video.rel, 1, video.keyframes)
    expected = ClipStore(cached.cache).load(video.rel, 1)
    assert np.array_equal(arrays.rgb, expected.rgb)
    assert np.array_equal(arrays.residual, expected.residual)


@pytest.mark.slow
def test_persistent_workers_follow_the_epoch(tmp_path) -> None:
    dm = tiny(tmp_path)
    dm.setup()
    train = dm.train_dataset()
    assert train.shares_epoch
    # forkserver: a forked worker may inherit a lock held by a thread of the parent (PyAV, torch)
    context = multiprocessing.get_context("forkserver")
    loader = DataLoader(
        train, batch_size=4, num_workers=1, persistent_workers=True, multiprocessing_context=context
    )
    seen = []
    for epoch in (0, 1):
        train.set_epoch(epoch)
        seen.append(torch.cat([b["input"] for b in loader]))
    for epoch in (0, 1):  # the worker drew what the main process draws for that epoch
        train.set_epoch(epoch)
        expected = torch.stack([train[i]["input"] for i in range(len(train))])
        assert torch.equal(seen[epoch], expected)
    assert not torch.equal(seen[0], seen[1])


@pytest.mark.parametrize(("teacher", "expected"), [("none", None), ("rgb_i3d", "rgb")])
def test_the_task_builds_rgb_only_for_a_teacher(teacher: str, expected: str | None) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_module("brisk.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=video", f"teacher={teacher}"])
    GlobalHydra.instance().clear()
    assert cfg.dataset.teacher_input == expected
