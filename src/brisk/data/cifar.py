"""CIFAR-10/100 from the standard python layout that torchvision's download leaves on disk.

We validate what matters for training (array shapes, label range, per-split counts) instead of md5 sums,
because users re-pack these files and a checksum mismatch says nothing about whether they are usable.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from brisk.data.base import DataModule, DatasetNotFoundError
from brisk.data.seeded import SeededTransformDataset
from brisk.data.splits import fixed_split

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": b"labels",
        "classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": b"fine_labels",
        "classes": 100,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}
_HOW_TO_GET = (
    "download and unpack the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(or torchvision.datasets.CIFAR10(root, download=True)) into paths.data_dir"
)


def read_cifar_split(
    folder: Path, files: list[str], label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Load pickled batches into uint8 images (N, 3, 32, 32) and int64 labels, validating both."""
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(
                folder.name, folder, f"file '{name}' (python pickle batch)", _HOW_TO_GET
            )
        try:
            with path.open("rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data, lab = (
                np.asarray(batch[b"data"], dtype=np.uint8),
                np.asarray(batch[label_key], dtype=np.int64),
            )
        except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same user error
            raise DatasetNotFoundError(
                folder.name,
                path,
                f"a python pickle with keys b'data' (N x 3072 uint8) and {label_key!r}",
                _HOW_TO_GET,
            ) from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DatasetNotFoundError(
                folder.name,
                path,
                f"b'data' of shape (N, 3072) with N labels, got {data.shape} and {len(lab)}",
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
            raise ValueError(f"dataset.variant must be one of {sorted(_LAYOUT)}, got '{variant}'")
        self.root, self.variant, self.layout = Path(root), variant, _LAYOUT[variant]
        self.val_size, self.train_subset, self.split_seed = val_size, train_subset, split_seed
        self.augment, self.seed = augment, seed
        self.num_classes = self.layout["classes"]
        self._splits: dict[str, Dataset] = {}

    def setup(self) -> None:
        folder = self.root / self.layout["folder"]
        if not folder.is_dir():
            raise DatasetNotFoundError(
                self.variant,
                folder,
                f"folder '{self.layout['folder']}/' with {', '.join(self.layout['train'] + self.layout['test'])}",
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
