"""What a data set must provide to the runner.

A :class:`DataModule` is built by ``hydra.utils.instantiate(cfg.dataset)``. Its datasets yield
either ``(input, target)`` tuples or dicts with at least ``"input"`` and ``"target"``; extra keys
travel with the batch (``"rgb"`` for a teacher, ``"video"`` with a video index so the evaluator can
pool clip scores into video scores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from brisk.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A data set is missing or malformed; the message says where we looked and what we expected.

    A :class:`~brisk.errors.UserError` (the CLI prints it without a traceback, exit status 2) and
    still a ``FileNotFoundError`` for callers that catch that.
    """

    def __init__(self, name: str, path: Path | str, expected: str, how_to_get: str) -> None:
        self._fields = (name, path, expected, how_to_get)
        # absolute: the user may not know which directory the run started in
        super().__init__(
            f"{name}: no usable data set at '{Path(path).expanduser().absolute()}'.\n"
            f"  expected: {expected}\n"
            f"  how to get it: {how_to_get}\n"
            f"  (set paths.data_dir=... to point brisk elsewhere; nothing is ever downloaded)"
        )

    def __reduce__(self) -> tuple:
        # launchers (joblib, submitit) pickle a failed job's exception back to the submitting side
        return (type(self), self._fields)


class DataModule:
    """Train/val/test datasets of one task, built lazily by :meth:`setup`.

    Subclasses fill ``self._splits`` ({"train", "val", "test"} -> Dataset) in :meth:`setup`; the
    accessors below serve them and say so when a caller forgot ``setup()``.
    """

    num_classes: int
    _splits: dict[str, Dataset]

    def setup(self) -> None:
        """Find and validate the files, failing fast with :class:`DatasetNotFoundError`."""
        raise NotImplementedError

    def on_device_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Transform a collated batch after the runner moved it to the device (identity here).

        Work that is cheap on an accelerator and expensive in a DataLoader worker belongs here: the
        video data sets ship uint8 clips and normalise them in this hook.
        """
        return batch

    def split_summary(self) -> dict[str, Any]:
        """What ``status.json`` records about the splits; above all what the reported checkpoint was
        chosen on.

        ``selected_on: val`` when validation is held out of the training data, so ``best.pt`` is
        reported; ``last`` when validation is the test split (CIFAR with ``dataset.val_size=0``,
        ImageNet's public val/): choosing ``best.pt`` there would pick the reported test figure on
        the test set, so the last checkpoint is reported instead. Video data sets say more.
        """
        same = self._split("val") is self._split("test")
        return {"selected_on": "last" if same else "val"}

    def train_dataset(self) -> Dataset:
        """The training split; raises naming the data module when :meth:`setup` was not called."""
        return self._split("train")

    def val_dataset(self) -> Dataset:
        """The validation split; raises naming the data module when :meth:`setup` was not called."""
        return self._split("val")

    def test_dataset(self) -> Dataset:
        """The test split; raises naming the data module when :meth:`setup` was not called."""
        return self._split("test")

    def _split(self, name: str) -> Dataset:
        splits = getattr(self, "_splits", None)
        if not splits:
            raise RuntimeError(
                f"{type(self).__name__}: call setup() before asking for the {name} split"
            )
        return splits[name]
