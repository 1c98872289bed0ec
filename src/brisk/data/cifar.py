"""CIFAR-10/100 from the standard python layout that torchvision's download leaves on disk.

We validate what matters for training (array shapes, label range, per-split counts) instead of md5
sums, because users re-pack these files and a checksum mismatch says nothing about whether they are
usable.

The batches are pickles, and unpickling runs whatever code a file names: a crafted file in a shared
data directory would run as the user. They are therefore read by :class:`_BatchUnpickler`, which
resolves only the few names the real files need (numpy's array and scalar reconstruction, dtype, and
``_codecs.encode`` for bytes re-pickled by Python 3) and rejects any other with an error naming the
file. Both key types users have are accepted: the official files' bytes keys (``b'data'``) and the
str keys of batches re-packed with Python 3 (``'data'``).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from brisk.data.base import DataModule, DatasetNotFoundError
from brisk.data.seeded import SeededTransformDataset
from brisk.data.splits import fixed_split
from brisk.errors import ConfigValueError, UnsafeFileError

log = logging.getLogger("brisk")

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "classes": 100,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}
_HOW_TO_GET = (
    "download and unpack the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(or torchvision.datasets.CIFAR10(root, download=True)) into paths.data_dir"
)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Every name a CIFAR batch may reference, under the module paths numpy 1.x and 2.x write."""
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 at protocol 2
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        frombuffer = numeric._frombuffer  # type: ignore[attr-defined]
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named something outside the allow-list."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused unimported."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _BatchUnpickler._allowed is None:
            _BatchUnpickler._allowed = _allowed_globals()
        found = _BatchUnpickler._allowed.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"it references '{module}.{name}'")
        return found


def load_batch(path: Path) -> dict[str, Any]:
    """One CIFAR batch as a dict with str keys, read without running code from the file.

    Raises :class:`~brisk.errors.UnsafeFileError` naming the file when it references anything but
    plain data, and ``pickle.UnpicklingError`` (or another error) when it is not a readable pickle.
    """
    with path.open("rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        except _RefusedGlobal as exc:
            raise UnsafeFileError(
                f"{path}: not loaded, {exc}: a CIFAR batch holds only numpy arrays, lists and "
                "strings, and unpickling anything else could run code; replace the file with the "
                "official python version"
            ) from None
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict, got {type(batch).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in batch.items()}


def read_cifar_split(
    folder: Path, files: list[str], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Load pickled batches into uint8 images (N, 3, 32, 32) and int64 labels, validating both."""
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(
                folder.name, folder, f"file '{name}' (python pickle batch)", _HOW_TO_GET
            )
        if path.stat().st_size == 0:
            raise DatasetNotFoundError(
                folder.name, path, "a python pickle batch, not an empty file", _HOW_TO_GET
            )
        try:
            batch = load_batch(path)
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = np.asarray(batch[label_key], dtype=np.int64)
        except UnsafeFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same user error
            raise DatasetNotFoundError(
                folder.name,
                path,
                f"a python pickle with keys 'data' (N x 3072 uint8) and '{label_key}' (bytes or "
                f"str keys); reading it failed with {type(exc).__name__}: {exc}",
                _HOW_TO_GET,
            ) from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DatasetNotFoundError(
                folder.name,
                path,
                f"'data' of shape (N, 3072) with N labels, got {data.shape} and {len(lab)}",
                _HOW_TO_GET,
            )
        if lab.min() < 0 or lab.max() >= num_classes:
            raise DatasetNotFoundError(
                folder.name,
                path,
                f"labels in [0, {num_classes}), got [{lab.min()}, {lab.max()}]",
                _HOW_TO_GET,
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


class CifarDataModule(DataModule):
    """CIFAR-10/100 from the official python batches under ``root``; nothing is downloaded.

    ``val_size`` images are held out of the training batches by a fixed ``split_seed`` (0
    validates on the test set); ``train_subset`` trains on fewer images for quick runs. Crops and
    flips are seeded per sample and epoch, so a resumed run sees the same augmentations.
    """

    def __init__(
        self,
        root: str,
        variant: str = "cifar10",
        val_size: int = 5000,
        train_subset: int | None = None,
        split_seed: int = 0,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if variant not in _LAYOUT:
            raise ConfigValueError(
                f"dataset.variant must be one of {sorted(_LAYOUT)}, got '{variant}'"
            )
        if int(val_size) < 0:
            raise ConfigValueError(
                f"dataset.val_size must be >= 0 (0: validate on test), got {val_size}"
            )
        if train_subset is not None and int(train_subset) < 1:
            raise ConfigValueError(
                f"dataset.train_subset must be >= 1 or null (all), got {train_subset}"
            )
        self.root, self.variant, self.layout = Path(root), variant, _LAYOUT[variant]
        self.val_size, self.train_subset, self.split_seed = val_size, train_subset, split_seed
        self.augment, self.seed = augment, seed
        self.num_classes = self.layout["classes"]
        self._splits: dict[str, Dataset] = {}

    def setup(self) -> None:
        """Read and check the batches; a missing folder or malformed file raises
        :class:`DatasetNotFoundError` or a one-line error naming it.
        """
        folder = self.root / self.layout["folder"]
        if not folder.is_dir():
            raise DatasetNotFoundError(
                self.variant,
                folder,
                f"folder '{self.layout['folder']}/' with "
                f"{', '.join(self.layout['train'] + self.layout['test'])}",
                _HOW_TO_GET,
            )
        args = (self.layout["label_key"], self.num_classes)
        x_train, y_train = read_cifar_split(folder, self.layout["train"], *args)
        x_test, y_test = read_cifar_split(folder, self.layout["test"], *args)
        normalize = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.layout["mean"], self.layout["std"]),
            ]
        )
        train_tf = (
            v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), normalize])
            if self.augment
            else normalize
        )

        full_train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
        n = len(full_train)
        n_val = self.val_size
        if n_val >= n:
            raise ConfigValueError(
                f"dataset.val_size={n_val} leaves no training images: the training set of "
                f"{folder} has {n}; choose dataset.val_size < {n} (0 validates on the test set)"
            )
        n_train = n - n_val if self.train_subset is None else min(self.train_subset, n - n_val)
        train_idx, val_idx = fixed_split(n, [n_train, n_val], self.split_seed)
        test = SeededTransformDataset(
            TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)), normalize
        )
        self._splits = {
            "train": SeededTransformDataset(
                Subset(full_train, train_idx.tolist()), train_tf, self.seed
            ),
            "val": SeededTransformDataset(Subset(full_train, val_idx.tolist()), normalize)
            if n_val
            else test,
            "test": test,
        }
