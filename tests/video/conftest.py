"""Small synthetic videos written on the fly, so the video tests need no downloaded data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brisk.video.codec import write_video
from brisk.video.datasets import MovingShapesDataModule
from brisk.video.synthetic import render_video


def textured(shape: tuple[int, ...], seed: int, smooth: int = 2) -> np.ndarray:
    """Blocky random texture: distinctive enough for exact motion search, no flat areas."""
    rng = np.random.default_rng(seed)
    h, w = shape[0] // smooth + 1, shape[1] // smooth + 1
    small = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return small.repeat(smooth, 0).repeat(smooth, 1)[: shape[0], : shape[1]]


def moving_square_frames(
    dx: int, dy: int, frames: int = 12, size: tuple[int, int] = (96, 128), side: int = 48
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A textured square moved by (dx, dy) px per frame over a static textured background.

    Returns the frames and the square's top-left corner (x, y) in every frame.
    """
    h, w = size
    background = textured((h, w), seed=1, smooth=4)
    patch = textured((side, side), seed=2, smooth=2)
    x0, y0 = (w - side) // 2 - dx * frames // 2, (h - side) // 2 - dy * frames // 2
    out, corners = [], []
    for t in range(frames):
        x, y = x0 + dx * t, y0 + dy * t
        f = background.copy()
        f[y : y + side, x : x + side] = patch
        out.append(f)
        corners.append((x, y))
    return np.stack(out), corners


@pytest.fixture
def square_video():
    """The :func:`moving_square_frames` generator, as a fixture (test modules are not a package)."""
    return moving_square_frames


@pytest.fixture
def make_video(tmp_path: Path):
    """``make_video(rel, cls=0, seed=0, frames=14)``: a tiny moving_shapes-like clip in tmp_path."""

    def make(rel: str, cls: int = 0, seed: int = 0, frames: int = 14, size: int = 32) -> Path:
        path = tmp_path / rel
        write_video(path, render_video(cls, seed, frames=frames, size=size), gop_size=30)
        return path

    return make


SMALL = {"resolution": [32, 32], "crop_size": 28, "num_workers": 0}


def tiny_shapes(tmp_path: Path, frames: int = 26, **kw) -> MovingShapesDataModule:
    """A moving_shapes set of 2 training and 1 test video per class at 32 px, cached in tmp_path."""
    return MovingShapesDataModule(
        tmp_path / "moving_shapes",
        train_per_class=2,
        test_per_class=1,
        frames=frames,
        size=32,
        cache_dir=tmp_path / "cache",
        **{**SMALL, **kw},
    )
