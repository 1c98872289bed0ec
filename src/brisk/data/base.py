"""What a data set must provide to the runner.

A :class:`DataModule` is built by ``hydra.utils.instantiate(cfg.dataset)``. Its datasets yield either
``(input, target)`` tuples or dicts with at least ``"input"`` and ``"target"``; extra keys travel with the
batch (``"rgb"`` for a teacher, ``"video"`` with a video index so the evaluator can pool clip scores into
video scores).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset


class DatasetNotFoundError(FileNotFoundError):
    """A data set is missing or malformed; the message says where we looked and what we expected."""

    def __init__(self, name: str, path: Path | str, expected: str, how_to_get: str) -> None:
        super().__init__(
            f"{name}: no usable data set at '{path}'.\n"
            f"  expected: {expected}\n"
            f"  how to get it: {how_to_get}\n"
            f"  (set paths.data_dir=... to point brisk elsewhere; nothing is ever downloaded)"
        )


class DataModule:
    """Train/val/test datasets of one task, built lazily by :meth:`setup`."""

    num_classes: int

    def setup(self) -> None:
        """Find and validate the files, failing fast with :class:`DatasetNotFoundError`."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def val_dataset(self) -> Dataset:
        raise NotImplementedError

    def test_dataset(self) -> Dataset:
        raise NotImplementedError
