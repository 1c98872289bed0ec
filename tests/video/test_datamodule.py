"""The video data sets through their public entry points: Hydra configs, setup(), dataset items."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from tests.video.conftest import SMALL, tiny_shapes

import brisk.config  # noqa: F401  (registers the runner's schemas and resolvers)
from brisk.data.base import DatasetNotFoundError
from brisk.errors import UserError
from brisk.video.codec import write_video
from brisk.video.datamodule import VideoDataModule
from brisk.video.datasets import (
    HMDB51DataModule,
    Kinetics400DataModule,
    MovingShapesDataModule,
    UCF101DataModule,
    VideoFolderDataModule,
)
from brisk.video.synthetic import render_video


def check_item(item: dict, channels: int, size: int, classes: int) -> None:
    assert set(item) == {"input", "target", "rgb", "video", "gop"}
    # uint8 through the DataLoader; the data module's on_device_batch makes the float inputs
    assert item["input"].shape == (channels, 12, size, size) and item["input"].dtype == torch.uint8
    assert item["rgb"].shape == (3, 12, size, size) and item["rgb"].dtype == torch.uint8
    assert isinstance(item["target"], int) and 0 <= item["target"] < classes
    assert isinstance(item["video"], int) and isinstance(item["gop"], int)


def test_moving_shapes_items_have_the_documented_shapes(tmp_path):
    dm = tiny_shapes(tmp_path)
    dm.setup()
    assert dm.num_classes == 8
    train, val, test = dm.train_dataset(), dm.val_dataset(), dm.test_dataset()
    # One of the 2 training videos per class is held out for validation (val_fraction 0.1).
    assert len(train) == 8 and len(val.videos) == 8
    # 26 frames = GOPs of 12, 12, 2: the 2-frame tail is too short to be a test clip.
    assert len(test) == 8 * 2
    assert not {v.rel for v in val.videos} & {v.rel for v in test.videos}
    check_item(train[3], 3, 28, 8)
    check_item(test[5], 3, 28, 8)
    assert [test[i]["video"] for i in range(4)] == [0, 0, 1, 1]
    assert [test[i]["gop"] for i in range(4)] == [0, 1, 0, 1]
    # Training picks a random full GOP and crop from (seed, epoch, index): reproducible per epoch.
    a = train[5]
    torch.testing.assert_close(train[5]["input"], a["input"])
    seen = set()
    for epoch in range(8):
        train.set_epoch(epoch)
        seen.add(train[5]["gop"])
    assert seen == {0, 1}
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["input"].shape == (4, 3, 12, 28, 28) and batch["video"].tolist() == [0, 1, 2, 3]
    # Worker processes see the same clips: randomness depends on (seed, epoch, index) only. Spawned,
    # not forked: a fork taken while other threads of the test process hold locks can deadlock.
    loader = torch.utils.data.DataLoader(
        train, batch_size=4, num_workers=2, multiprocessing_context="spawn"
    )
    parallel = next(iter(loader))
    torch.testing.assert_close(parallel["input"], batch["input"])
    assert parallel["gop"].tolist() == batch["gop"].tolist()


def test_motion_channels_and_on_the_fly_clips(tmp_path):
    cached = tiny_shapes(tmp_path, mv_channels=True)
    cached.setup()
    check_item(cached.test_dataset()[0], 5, 28, 8)
    live = tiny_shapes(tmp_path, mv_channels=True, cache_clips=False)
    live.setup()
    for i in (0, 7):
        a, b = cached.test_dataset()[i], live.test_dataset()[i]
        torch.testing.assert_close(a["input"], b["input"])
        torch.testing.assert_close(a["rgb"], b["rgb"])


def test_moving_shapes_generation_is_deterministic(tmp_path):
    a = tiny_shapes(tmp_path / "a")
    b = tiny_shapes(tmp_path / "b")
    a.setup()
    b.setup()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.avi"))
    assert len(files) == 24
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def video(path: Path, cls: int = 0, seed: int = 0) -> None:
    write_video(path, render_video(cls, seed, frames=14, size=32), gop_size=30)


def test_ucf101_layout_end_to_end_with_a_broken_video(tmp_path):
    root = tmp_path / "ucf101"
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("1 Jump\n2 Run\n")
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text(
        "Jump/v_Jump_g08_c01.avi 1\r\nRun/v_Run_g08_c01.avi 2\r\nRun/v_Run_g09_c01.avi 2\r\n"
    )
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text(
        "Jump/v_Jump_g01_c01.avi\nRun/v_Run_g01_c01.avi\n"
    )
    for i, rel in enumerate(
        [
            "Jump/v_Jump_g08_c01.avi",
            "Run/v_Run_g08_c01.avi",
            "Jump/v_Jump_g01_c01.avi",
            "Run/v_Run_g01_c01.avi",
        ]
    ):
        video(root / "UCF-101" / rel, cls=i % 2, seed=i)
    (root / "UCF-101" / "Run" / "v_Run_g09_c01.avi").write_text("not a video")
    # val_fraction=0: no validation is carved out of these 3 training videos
    dm = UCF101DataModule(root, cache_dir=tmp_path / "cache", val_fraction=0, **SMALL)
    dm.setup()
    assert dm.split_summary()["selected_on"] == "last"
    assert dm.num_classes == 2 and dm.classes == ["Jump", "Run"]
    assert len(dm.train_dataset()) == 2  # the broken video is left out, the run goes on
    assert [f["rel"] for f in dm.report.failures] == ["Run/v_Run_g09_c01.avi"]
    assert [dm.test_dataset()[i]["target"] for i in range(2)] == [0, 1]


def test_hmdb51_layout_end_to_end(tmp_path):
    root = tmp_path / "hmdb51"
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    (splits / "jump_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (splits / "wave_test_split1.txt").write_text("d.avi 1\ne.avi 2\n")
    for i, rel in enumerate(["jump/a.avi", "jump/b.avi", "wave/d.avi", "wave/e.avi"]):
        video(root / rel, cls=i, seed=i)
    dm = HMDB51DataModule(root, cache_dir=tmp_path / "cache", **SMALL)
    dm.setup()  # jump/c.avi (unused) is absent on disk and never asked for
    assert dm.classes == ["jump", "wave"]
    assert len(dm.train_dataset()) == 2 and not dm.report.failures
    assert sorted(dm.test_dataset()[i]["target"] for i in range(2)) == [0, 1]


def test_kinetics400_layout_end_to_end(tmp_path):
    root = tmp_path / "kinetics400"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        '"arm wrestling",aaa,0,10,train\n"abseiling (rope)",bbb,5,15,train\n'
        "abseiling (rope),gone,1,11,train\n"
    )
    (root / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\narm wrestling,ccc,3,13,val\n"
    )
    video(root / "train" / "arm_wrestling" / "aaa_000000_000010.mp4", 0, 0)
    video(root / "train" / "abseiling_rope" / "bbb_000005_000015.mp4", 1, 1)
    video(root / "val" / "ccc_000003_000013.mkv", 2, 2)
    dm = Kinetics400DataModule(root, cache_dir=tmp_path / "cache", **SMALL)
    dm.setup()
    assert dm.classes == ["abseiling (rope)", "arm wrestling"]
    assert len(dm.train_dataset()) == 2 and dm.test_dataset()[0]["target"] == 1


def test_video_folder_end_to_end(tmp_path):
    root = tmp_path / "videos"
    for c in ("a", "b"):
        for i in range(3):
            video(root / c / f"{i}.avi", cls=i, seed=i)
    dm = VideoFolderDataModule(root, test_fraction=0.34, cache_dir=tmp_path / "cache", **SMALL)
    dm.setup()
    assert dm.num_classes == 2 and len(dm.test_dataset()) == 2
    # of the 2 training videos per class, one is held out for validation
    assert len(dm.train_dataset()) == 2 and len(dm.val_dataset()) == 2


@pytest.mark.parametrize(
    "cls", [UCF101DataModule, HMDB51DataModule, Kinetics400DataModule, VideoFolderDataModule]
)
def test_missing_data_set_fails_fast_with_where_and_how(tmp_path, cls):
    dm = cls(tmp_path / "nowhere", cache_dir=tmp_path / "cache", **SMALL)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup()
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "expected:" in msg and "how to get it:" in msg


def test_bad_knobs_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match="normalization"):
        tiny_shapes(tmp_path, normalization="imagenet")
    with pytest.raises(ValueError, match="crop_size"):
        tiny_shapes(tmp_path, crop_size=40)
    with pytest.raises(ValueError, match="resolution"):
        tiny_shapes(tmp_path, resolution=[33, 32])


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_module("brisk.conf", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "name,cls",
    [
        ("ucf101", UCF101DataModule),
        ("hmdb51", HMDB51DataModule),
        ("kinetics400", Kinetics400DataModule),
        ("video_folder", VideoFolderDataModule),
        ("moving_shapes", MovingShapesDataModule),
    ],
)
def test_dataset_configs_compose_and_instantiate(hydra_conf, tmp_path, name, cls):
    cfg = compose("config", overrides=[f"dataset={name}", f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.dataset)
    assert type(dm) is cls and isinstance(dm, VideoDataModule)
    assert dm.root == tmp_path / name if name != "video_folder" else dm.root == tmp_path / "videos"
    assert dm.cache_dir == tmp_path / "cache" / name
    assert dm.gop_size == 12


def test_prepare_core_builds_the_cache_from_a_config(hydra_conf, tmp_path):
    from brisk.video.prepare import prepare_dataset

    cfg = compose(
        "config",
        overrides=[
            "dataset=moving_shapes",
            f"paths.data_dir={tmp_path}",
            "dataset.train_per_class=1",
            "dataset.test_per_class=1",
            "dataset.num_workers=0",
        ],
    )
    report = prepare_dataset(cfg.dataset)
    assert len(report.records) == 16 and report.prepared == 16
    assert (
        tmp_path / "cache" / "moving_shapes" / "mpeg4_64x64_gop12_q1" / "manifest.json"
    ).is_file()
    assert prepare_dataset(cfg.dataset).reused == 16
    with pytest.raises(UserError, match="video data set"):
        prepare_dataset(compose("config", overrides=["dataset=digits"]).dataset)


@pytest.mark.parametrize("dataset", ["moving_shapes", "ucf101", "hmdb51", "kinetics400"])
def test_the_clip_cache_goes_under_paths_cache_dir(dataset: str) -> None:
    from tests.conftest import compose_config

    default = compose_config("task=video", f"dataset={dataset}", "paths.data_dir=/d")
    assert default.dataset.cache_dir == f"/d/cache/{dataset}"
    moved = compose_config("task=video", f"dataset={dataset}", "paths.cache_dir=/scratch/c")
    assert moved.dataset.cache_dir == f"/scratch/c/{dataset}"


def test_video_keys_are_checked_by_one_dataclass_in_python_and_on_the_command_line(
    tmp_path: Path,
) -> None:
    from tests.conftest import run_train

    from brisk.errors import ConfigValueError
    from brisk.video.settings import MovingShapesSettings

    with pytest.raises(ConfigValueError, match=r"dataset.crop_size=100.*dataset.qscale=0"):
        MovingShapesDataModule(tmp_path, crop_size=100, qscale=0)
    with pytest.raises(ConfigValueError, match=r"dataset.split=4"):
        UCF101DataModule(tmp_path, split=4)
    assert MovingShapesSettings(root="r").flip is False  # the schema holds the defaults
    proc = run_train(
        "task=video",
        "dataset.crop_size=100",
        "dataset.test_crops=4",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"HYDRA_FULL_ERROR": "0"},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
    assert len(errors) == 1 and "dataset.crop_size=100" in errors[0]
    assert "dataset.test_crops=4" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "moving_shapes").exists()  # refused before any work
