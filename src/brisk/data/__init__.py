"""Image data sets (digits, CIFAR, ImageNet) behind the DataModule contract; video lives in
brisk.video."""

from brisk.data.base import DataModule, DatasetNotFoundError

__all__ = ["DataModule", "DatasetNotFoundError"]
