"""ImageNet (or any image classification set) in ``train/`` and ``val/`` class folders."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from brisk.data.base import DataModule, DatasetNotFoundError
from brisk.data.seeded import SeededTransformDataset

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP")


def load_image(path: str) -> Image.Image:
    """An RGB image, decoded only if it is one of :data:`IMAGE_FORMATS`."""
    with open(path, "rb") as f:
        return Image.open(f, formats=IMAGE_FORMATS).convert("RGB")


class ImageNetDataModule(DataModule):
    """Validation doubles as the test split: ImageNet's test labels are not public.

    Images are opened by PIL restricted to raster formats (:data:`IMAGE_FORMATS`): PIL picks a
    decoder from a file's content, not its name, and some (EPS) hand the file to Ghostscript, so a
    crafted ``.jpg`` in a shared folder could otherwise run a program. A class folder with no image,
    or a folder that cannot be listed, is reported with its path.
    """

    def __init__(
        self, root: str, image_size: int = 224, resize_size: int = 256, seed: int = 0
    ) -> None:
        self.root, self.image_size, self.resize_size, self.seed = (
            Path(root),
            image_size,
            resize_size,
            seed,
        )
        self._splits: dict[str, Dataset] = {}

    def _folder(self, split: str) -> ImageFolder:
        try:
            return ImageFolder(str(self.root / split), loader=load_image)
        except (FileNotFoundError, PermissionError) as exc:
            raise DatasetNotFoundError(
                "imagenet",
                self.root / split,
                f"image files (.jpg, .jpeg, .png, ...) in every class folder; {exc}",
                "remove empty class folders or add their images",
            ) from exc

    def setup(self) -> None:
        """Check the ``train/`` and ``val/`` class folders and build the image folders with their
        transforms; a missing or empty split raises :class:`DatasetNotFoundError`.
        """
        for split in ("train", "val"):
            folder = self.root / split
            if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
                raise DatasetNotFoundError(
                    "imagenet",
                    folder,
                    "train/<class>/*.JPEG and val/<class>/*.JPEG "
                    "(one folder per class, same class names)",
                    "get ILSVRC2012 from https://image-net.org and sort val/ into class folders "
                    "(e.g. with the valprep.sh script used by the PyTorch examples)",
                )
        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(_MEAN, _STD)]
        train_tf = v2.Compose(
            [
                v2.RandomResizedCrop(self.image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                *to_tensor,
            ]
        )
        eval_tf = v2.Compose(
            [
                v2.Resize(self.resize_size, antialias=True),
                v2.CenterCrop(self.image_size),
                *to_tensor,
            ]
        )
        train, val = self._folder("train"), self._folder("val")
        if train.classes != val.classes:
            raise DatasetNotFoundError(
                "imagenet",
                self.root,
                "the same class folders under train/ and val/",
                "re-sort val/ by class",
            )
        self.num_classes = len(train.classes)
        self.classes = list(train.classes)
        evaluation = SeededTransformDataset(val, eval_tf)
        self._splits = {
            "train": SeededTransformDataset(train, train_tf, self.seed),
            "val": evaluation,
            "test": evaluation,
        }
