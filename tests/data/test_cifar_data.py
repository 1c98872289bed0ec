"""CIFAR loading: the real files from ../shared when present, and validation of broken ones."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.conftest import write_fake_cifar

from brisk.data.base import DatasetNotFoundError
from brisk.data.cifar import CifarDataModule


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_cifar10_has_the_official_counts(shared_cifar10: Path) -> None:
    dm = CifarDataModule(str(shared_cifar10), val_size=0)
    dm.setup()
    train, test = dm.train_dataset(), dm.test_dataset()
    assert len(train) == 50_000 and len(test) == 10_000
    train_counts = Counter(int(train.base[i][1]) for i in range(len(train)))
    test_counts = Counter(int(test.base[i][1]) for i in range(len(test)))
    assert set(train_counts.values()) == {5000} and set(test_counts.values()) == {1000}
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and abs(float(x.mean())) < 1.5


def test_validation_split_and_subset_are_disjoint_and_fixed(tmp_path: Path) -> None:
    root = write_fake_cifar(tmp_path, per_class_train=50)
    a = CifarDataModule(str(root), val_size=100, train_subset=200)
    a.setup()
    b = CifarDataModule(str(root), val_size=100, train_subset=200)
    b.setup()
    train_idx, val_idx = set(a.train_dataset().base.indices), set(a.val_dataset().base.indices)
    assert len(train_idx) == 200 and len(val_idx) == 100 and not train_idx & val_idx
    assert train_idx == set(b.train_dataset().base.indices)


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path: Path) -> None:
    dm = CifarDataModule(str(write_fake_cifar(tmp_path)), val_size=0, seed=3)
    dm.setup()
    ds = dm.train_dataset()
    first = ds[5][0]
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(first, ds[5][0])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[5][0])


def test_malformed_batch_names_the_file(tmp_path: Path) -> None:
    root = write_fake_cifar(tmp_path)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    with bad.open("wb") as f:
        pickle.dump({b"data": [[1, 2, 3]], b"labels": [0]}, f)
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        CifarDataModule(str(root)).setup()
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        CifarDataModule(str(root)).setup()


def test_labels_out_of_range_are_rejected(tmp_path: Path) -> None:
    root = write_fake_cifar(tmp_path)
    with (root / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": [[0] * 3072], b"labels": [10]}, f)
    with pytest.raises(DatasetNotFoundError, match=r"labels in \[0, 10\)"):
        CifarDataModule(str(root)).setup()


def test_a_missing_data_set_is_named_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        CifarDataModule(root="data").setup()
    assert f"no usable data set at '{tmp_path / 'data'}" in str(err.value)
