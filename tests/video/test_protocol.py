"""The evaluation protocol: a validation set held out of the training list, and the test views."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.video.conftest import SMALL
from tests.video.conftest import tiny_shapes as shapes

from brisk.errors import UserError
from brisk.video.clips import CropBox, eval_crop_boxes, squash_box
from brisk.video.datamodule import uniform_positions
from brisk.video.datasets import (
    HMDB51DataModule,
    Kinetics400DataModule,
    MovingShapesDataModule,
    UCF101DataModule,
    VideoFolderDataModule,
)
from brisk.video.splits import carve_validation, ucf101_group


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated set and cache for the tests of this module (they only read it)."""
    return tmp_path_factory.mktemp("shapes")


def tiny_shapes(tmp_path: Path, **kw) -> MovingShapesDataModule:
    # GOPs of 12, 12, 12, 2: three test clips per video
    return shapes(tmp_path, frames=38, **{"resolution": [40, 32], **kw})


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_carve_validation_is_stratified_seeded_and_keeps_groups_whole():
    # 3 classes of 20 videos in groups of 4: 10 % per class is 2 videos, so one group of 4 (or none)
    labels = [c for c in range(3) for _ in range(20)]
    groups = [f"{c}/g{i // 4}" for c in range(3) for i in range(20)]
    val = carve_validation(labels, groups, 0.1, seed=0)
    assert val == carve_validation(labels, groups, 0.1, seed=0)
    assert val != carve_validation(labels, groups, 0.1, seed=1)
    per_class = Counter(labels[i] for i in val)
    assert set(per_class) == {0, 1, 2} and set(per_class.values()) == {4}
    held = {groups[i] for i in val}
    assert all((groups[i] in held) == (i in val) for i in range(len(labels)))
    # Without groups: per class the count nearest to the fraction, never the whole class.
    single = carve_validation(labels, [None] * len(labels), 0.25, seed=3)
    assert Counter(labels[i] for i in single) == {0: 5, 1: 5, 2: 5}
    assert carve_validation([0, 0], [None, None], 0.9) == [0] or carve_validation(
        [0, 0], [None, None], 0.9
    ) == [1]
    assert carve_validation(labels, groups, 0.0) == []
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(labels, groups, 1.0)


def test_ucf101_group_key():
    assert ucf101_group("YoYo/v_YoYo_g08_c03.avi") == "YoYo/g08"
    assert ucf101_group("HandstandPushups/v_HandStandPushups_g8_c01.avi") == "HandstandPushups/g08"
    assert ucf101_group("x/clip.avi") is None


def _ucf(root: Path) -> UCF101DataModule:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Jump\n2 Run\n")
    train, test = [], []
    for y, cls in enumerate(("Jump", "Run")):
        for g in range(1, 11):
            for c in range(1, 4):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                (train if g > 3 else test).append(rel + (f" {y + 1}" if g > 3 else ""))
                touch(root / "UCF-101" / rel)
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return UCF101DataModule(root, cache_dir=root / "cache", val_fraction=0.2, **SMALL)


def _hmdb(root: Path) -> HMDB51DataModule:
    for cls in ("jump", "run"):
        lines = [f"{cls}{i}.avi {1 if i < 8 else 2}" for i in range(12)]
        (root / "testTrainMulti_7030_splits").mkdir(parents=True, exist_ok=True)
        (root / "testTrainMulti_7030_splits" / f"{cls}_test_split1.txt").write_text(
            "\n".join(lines)
        )
        for i in range(12):
            touch(root / cls / f"{cls}{i}.avi")
    return HMDB51DataModule(root, cache_dir=root / "cache", **SMALL)


def _kinetics(root: Path) -> Kinetics400DataModule:
    head = "label,youtube_id,time_start,time_end,split\n"
    train = "".join(f"{c},{c[0]}{i},0,10,train\n" for c in ("jump", "run") for i in range(10))
    val = "".join(f"{c},{c[0]}v{i},0,10,validate\n" for c in ("jump", "run") for i in range(3))
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(head + train)
    (root / "annotations" / "validate.csv").write_text(head + val)
    for line in (train + val).splitlines():
        touch(root / "clips" / f"{line.split(',')[1]}_000000_000010.mp4")
    return Kinetics400DataModule(root, cache_dir=root / "cache", **SMALL)


def _folder(root: Path) -> VideoFolderDataModule:
    for cls in ("a", "b"):
        for i in range(10):
            touch(root / cls / f"{i}.avi")
    return VideoFolderDataModule(root, cache_dir=root / "cache", val_fraction=0.2, **SMALL)


@pytest.mark.parametrize("make", [_ucf, _hmdb, _kinetics, _folder], ids=lambda f: f.__name__[1:])
def test_validation_and_test_share_no_video(tmp_path, make):
    dm = make(tmp_path / "data")
    index = dm.find_videos()
    train, val = dm.split_videos(index)
    names = {
        k: {e.rel for e in v} for k, v in (("train", train), ("val", val), ("test", index.test))
    }
    assert names["val"] and names["test"] and names["train"]
    assert not names["val"] & names["test"] and not names["val"] & names["train"]
    assert names["train"] | names["val"] == {e.rel for e in index.train}
    assert {e.label for e in val} == {0, 1}  # stratified: every class gives validation videos
    groups = {e.group for e in val}
    assert not any(e.group in groups for e in train if e.group is not None)
    if make is _ucf:
        assert (
            len(groups) == 2
        )  # 21 training videos per class in groups of 3: 0.2 -> one group each


def test_moving_shapes_protocol_end_to_end(shapes_dir):
    dm = tiny_shapes(shapes_dir, test_crops=10, test_clips=2, val_clips=1)
    dm.setup()
    val, test = dm.val_dataset(), dm.test_dataset()
    summary = dm.split_summary()
    assert summary["selected_on"] == "val" and summary["layout"] == "generated"
    assert (summary["train_videos"], summary["val_videos"], summary["test_videos"]) == (8, 8, 8)
    assert not {v.rel for v in val.videos} & {v.rel for v in test.videos}
    assert len(val) == 8  # one GOP per validation video, centre crop
    # 2 of the 3 usable GOPs per test video, uniformly spaced, x 10 views
    assert len(test) == summary["test_clips_evaluated"] == 8 * 2 * 10
    assert [test[i]["gop"] for i in (0, 10)] == [0, 2] and test[19]["video"] == 0
    assert "10 crops" in summary["test_protocol"]
    # Views 5-9 are the mirror images of views 0-4.
    for k in (0, 4):
        torch.testing.assert_close(test[5 + k]["input"], test[k]["input"].flip(-1))
    assert not torch.equal(test[0]["input"], test[1]["input"])


def test_val_fraction_zero_reports_the_last_checkpoint(shapes_dir):
    dm = tiny_shapes(shapes_dir, val_fraction=0)
    dm.setup()
    assert dm.split_summary()["selected_on"] == "last" and dm.split_summary()["val_videos"] == 0
    assert len(dm.train_dataset()) == 16 and len(dm.test_dataset()) == 8 * 3


def test_uniform_positions_and_crop_views():
    assert uniform_positions(10, None) == list(range(10))
    assert uniform_positions(10, 3) == [1, 5, 8] and uniform_positions(2, 5) == [0, 1]
    three = eval_crop_boxes(256, 340, 224, 3)
    assert [(b.x, b.y, b.w, b.h) for b in three] == [
        (0, 0, 256, 256),
        (42, 0, 256, 256),
        (84, 0, 256, 256),
    ]
    ten = eval_crop_boxes(256, 340, 224, 10)
    assert {(b.x, b.y) for b in ten[:5]} == {(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)}
    assert [b.flip for b in ten] == [False] * 5 + [True] * 5
    assert eval_crop_boxes(256, 340, 224, 1) == [CropBox(16, 58, 224, 224, 224)]
    # squash: a box on the 256 x 256 squashed frame covers the same fraction of the 340 x 256 frame
    assert squash_box(CropBox(16, 16, 224, 224, 224), 256, 340) == CropBox(16, 21, 224, 298, 224)


def test_squash_resize_changes_the_view_not_the_shapes(shapes_dir):
    keep = tiny_shapes(shapes_dir)
    squash = tiny_shapes(shapes_dir, resize="squash")
    keep.setup()
    squash.setup()
    a, b = keep.test_dataset()[0], squash.test_dataset()[0]
    assert a["input"].shape == b["input"].shape == (3, 12, 28, 28)
    assert not torch.equal(a["input"], b["input"])


@pytest.mark.parametrize(
    "key,value",
    [
        ("val_fraction", 1.0),
        ("val_clips", 0),
        ("test_clips", "some"),
        ("test_crops", 5),
        ("resize", "stretch"),
        ("mv_border", "wrap"),
    ],
)
def test_bad_protocol_values_are_user_errors_naming_the_key(tmp_path, key, value):
    with pytest.raises(UserError, match=f"dataset.{key}"):
        tiny_shapes(tmp_path, **{key: value})


@pytest.mark.slow
def test_status_json_records_the_split_and_what_was_selected_on(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from brisk.train import train

    common = [
        "task=video",
        "debug=fast",
        "model.width_mult=0.25",
        "trainer.batch_size=8",
        "trainer.threads=1",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.train_per_class=3",
        "dataset.test_per_class=1",
        "dataset.frames=26",
        "dataset.size=32",
        "dataset.resolution=[32,32]",
        "dataset.crop_size=28",
        "dataset.num_workers=0",
        "dataset.test_crops=3",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_module("brisk.conf", version_base="1.3"):
        for fraction, selected in ((0.1, "val"), (0.0, "last")):
            cfg = compose("config", overrides=[*common, f"dataset.val_fraction={fraction}"])
            run = tmp_path / f"run{fraction}"
            train(cfg, run)
            status = json.loads((run / "status.json").read_text())
            assert status["status"] == "ok" and status["selected_on"] == selected
            assert status["test_videos"] == 8
            assert status["val_videos"] == (8 if selected == "val" else 0)
            # cost per video counts every clip x crop of the test protocol: 2 GOPs x 3 crops
            assert status["cost"]["cost/student/clips_per_video"] == 6
    GlobalHydra.instance().clear()
