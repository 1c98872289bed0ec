"""Loading user files runs no code: CIFAR pickles, image folders, cached clip arrays.

Also: both CIFAR key types load, a one-class data set warns, and the ``video_folder`` cache is kept
apart per source folder.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tests.conftest import write_fake_cifar

from brisk.config.validate import check_data
from brisk.data.base import DatasetNotFoundError
from brisk.data.cifar import CifarDataModule, load_batch
from brisk.data.imagenet import ImageNetDataModule, load_image
from brisk.errors import UnsafeFileError, UserError


class _Payload:
    """Unpickling this opens (creates) ``path`` for writing: a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _batch(n: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "labels": rng.integers(0, 10, size=n),
    }


def test_a_code_running_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    root = write_fake_cifar(tmp_path / "data")
    planted = tmp_path / "planted"
    bad = root / "cifar-10-batches-py" / "data_batch_2"
    with bad.open("wb") as f:
        pickle.dump({b"data": _Payload(planted), b"labels": [0]}, f)
    # the payload is real: a plain unpickler runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()

    with pytest.raises(UnsafeFileError, match="data_batch_2") as err:
        CifarDataModule(str(root), val_size=10).setup()
    assert "'io.open'" in str(err.value) and isinstance(err.value, UserError)
    assert not planted.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_re_packed_with_python_3_str_keys_load(tmp_path: Path, protocol: int) -> None:
    official = write_fake_cifar(tmp_path / "official")
    repacked = tmp_path / "repacked" / "cifar-10-batches-py"
    repacked.mkdir(parents=True)
    for src in sorted((official / "cifar-10-batches-py").iterdir()):
        batch = load_batch(src)  # str keys whatever the file had
        batch = {"data": batch["data"], "labels": np.asarray(batch["labels"]), "x": np.int64(3)}
        with (repacked / src.name).open("wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    a = CifarDataModule(str(official), val_size=10, augment=False)
    b = CifarDataModule(str(tmp_path / "repacked"), val_size=10, augment=False)
    a.setup()
    b.setup()
    for split in ("train", "val", "test"):
        da, db = getattr(a, f"{split}_dataset")(), getattr(b, f"{split}_dataset")()
        assert len(da) == len(db)
        xa, ya = da[3]
        xb, yb = db[3]
        assert torch.equal(xa, xb) and int(ya) == int(yb)


def test_an_empty_batch_file_says_so(tmp_path: Path) -> None:
    root = write_fake_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="empty file"):
        CifarDataModule(str(root), val_size=10).setup()


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_cifar10_batches_pass_the_restricted_unpickler(shared_cifar10: Path) -> None:
    folder = shared_cifar10 / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        batch = load_batch(folder / name)
        assert all(isinstance(k, str) for k in batch), name
    batch = load_batch(folder / "data_batch_1")
    assert batch["data"].shape == (10000, 3072) and batch["data"].dtype == np.uint8
    assert len(batch["labels"]) == 10000


# ------------------------------------------------------------------------------- images
def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_images_decode_only_as_raster_formats(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png", 7)
    assert load_image(str(tmp_path / "ok.png")).size == (8, 8)
    # PostScript named .jpg: PIL would hand it to Ghostscript if it were allowed to pick the format
    disguised = tmp_path / "disguised.jpg"
    disguised.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(Image.UnidentifiedImageError):
        load_image(str(disguised))


def test_an_image_folder_with_one_class_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for split in ("train", "val"):
        for i in range(2):
            _png(tmp_path / split / "only" / f"{i}.png", i)
    dm = ImageNetDataModule(str(tmp_path), image_size=8, resize_size=8)
    dm.setup()
    cfg = OmegaConf.create({"trainer": {"batch_size": 1}})
    with caplog.at_level(logging.WARNING, logger="brisk"):
        check_data(cfg, dm)
    assert "single class ('only')" in caplog.text


def test_a_video_data_set_with_one_class_warns(caplog: pytest.LogCaptureFixture) -> None:
    # what VideoFolderDataModule.setup() leaves for a folder with one class sub-folder
    clips = [0, 1, 2]
    dm = SimpleNamespace(
        num_classes=1,
        classes=["walk"],
        train_dataset=lambda: clips,
        val_dataset=lambda: clips,
        test_dataset=lambda: clips,
    )
    with caplog.at_level(logging.WARNING, logger="brisk"):
        check_data(OmegaConf.create({"trainer": {"batch_size": 2}}), dm)
    assert "single class ('walk')" in caplog.text


def test_an_empty_class_folder_is_a_user_error_naming_it(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _png(tmp_path / split / "a" / "0.png", 0)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "val" / "b").mkdir()
    with pytest.raises(DatasetNotFoundError, match="train"):
        ImageNetDataModule(str(tmp_path)).setup()


# ------------------------------------------------------------------------------- video caches
def test_cached_clip_arrays_never_unpickle(tmp_path: Path) -> None:
    from brisk.errors import UnsafeFileError
    from brisk.video.cache import CacheSettings, ClipStore, VideoCache

    cache = VideoCache(tmp_path, CacheSettings(size=(8, 8), gop_size=2, clips=True))
    for kind in ("rgb", "res"):
        path = cache.clip_path("v", kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.array([[_Payload(tmp_path / "planted")]], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"v\.rgb\.npy holds Python objects"):
        ClipStore(cache).load("v", 0)
    assert not (tmp_path / "planted").exists()


def test_video_folder_cache_is_keyed_by_its_source_folder(tmp_path: Path) -> None:
    from brisk.video.datasets import VideoFolderDataModule

    def cache_root(folder: str) -> Path:
        dm = VideoFolderDataModule(
            tmp_path / folder, cache_dir=tmp_path / "cache", resolution=[64, 64], crop_size=56
        )
        return dm.cache.root

    a, b = cache_root("videos_a"), cache_root("videos_b")
    assert a != b and a.parent.parent == b.parent.parent == tmp_path / "cache"
    assert cache_root("videos_a") == a  # the same folder finds its cache again
    assert a.name == b.name  # the settings still name the variant inside it
