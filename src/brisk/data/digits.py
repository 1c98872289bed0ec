"""scikit-learn's handwritten digits: real data that ships with a dependency, so plain ``train``
works on a fresh clone with no download. Images are 8x8 with 17 grey levels; we upsample them
bilinearly so a small CNN has room for two conv stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from brisk.data.base import DataModule
from brisk.data.splits import fixed_split
from brisk.errors import ConfigValueError


class DigitsDataModule(DataModule):
    """The default data set: trains in seconds on a CPU, so ``train`` and the tests need no data."""

    num_classes = 10

    def __init__(
        self,
        image_size: int = 16,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        if int(image_size) < 1:
            raise ConfigValueError(f"dataset.image_size must be >= 1, got {image_size}")
        if not 0 < val_fraction + test_fraction < 1:
            raise ConfigValueError(
                f"dataset.val_fraction + dataset.test_fraction must be in (0, 1), got "
                f"{val_fraction} + {test_fraction}"
            )
        self.image_size, self.val_fraction, self.test_fraction = (
            image_size,
            val_fraction,
            test_fraction,
        )
        self.split_seed = split_seed
        self._splits: dict[str, Dataset] = {}

    def setup(self) -> None:
        """Load, upsample and standardise the images, then split them by ``split_seed``."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (
            torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        )  # (N, 1, 8, 8) in [0, 1]
        x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        x = (x - x.mean()) / x.std()
        y = torch.tensor(digits.target, dtype=torch.long)
        n = len(y)
        n_test, n_val = round(n * self.test_fraction), round(n * self.val_fraction)
        train_idx, val_idx, test_idx = fixed_split(
            n, [n - n_val - n_test, n_val, n_test], self.split_seed
        )
        self._splits = {
            "train": TensorDataset(x[train_idx], y[train_idx]),
            "val": TensorDataset(x[val_idx], y[val_idx]),
            "test": TensorDataset(x[test_idx], y[test_idx]),
        }
