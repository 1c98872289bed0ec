"""The on-disk layouts users already have (official, MMAction2's), built from the real clips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brisk.video.datasets import HMDB51DataModule, Kinetics400DataModule, UCF101DataModule

# Short real clips (74 frames each), symlinked under the names each layout expects.
CLIMB = "hmdb51/climb_stairs/Increase_stride_length_by_running_stairs__working_step_over_action_speed_development_climb_stairs_f_cm_np1_le_med_1.avi"  # noqa: E501
STABLE = "hmdb51/climb_stairs/stabilized_Increase_stride_length_by_running_stairs__working_step_over_action_speed_development_climb_stairs_f_cm_np1_le_med_1.avi"  # noqa: E501
SMALL = {"resolution": [32, 24], "crop_size": 20, "num_workers": 0, "cache_clips": False}

# (relative name, split, label, source clip): two classes, one training and one test video each
VIDEOS = [
    ("Jump/v_Jump_g01_c01.avi", "train", 0, CLIMB),
    ("Run/v_Run_g01_c01.avi", "train", 1, STABLE),
    ("Jump/v_Jump_g02_c01.avi", "test", 0, STABLE),
    ("Run/v_Run_g02_c01.avi", "test", 1, CLIMB),
]


@pytest.fixture
def clips(shared_data: Path) -> dict[str, Path]:
    found = {rel: shared_data / "video" / rel for rel in (CLIMB, STABLE)}
    if not all(p.is_file() for p in found.values()):
        pytest.skip("real clips not present")
    return found


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def check(dm, layout: str, classes: list[str]) -> None:
    dm.setup()
    assert dm.split_summary()["layout"].startswith(layout)
    assert dm.classes == classes and not dm.report.failures
    assert dm.split_summary()["train_videos"] == 2 and dm.split_summary()["test_videos"] == 2
    test = dm.test_dataset()
    assert sorted({test[i]["target"] for i in range(len(test))}) == [0, 1]
    assert test[0]["input"].shape == (3, 12, 20, 20) and torch.isfinite(test[0]["input"]).all()


def ucf_official_files(d: Path) -> None:
    write(d / "classInd.txt", "1 Jump\n2 Run\n")
    write(d / "trainlist01.txt", "".join(f"{r} {y + 1}\n" for r, s, y, _ in VIDEOS if s == "train"))
    write(d / "testlist01.txt", "".join(f"{r}\n" for r, s, _, _ in VIDEOS if s == "test"))


def mmaction_lists(root: Path, name: str) -> None:
    for split, kind in (("train", "train"), ("test", "val")):
        lines = "".join(f"{r} {y}\n" for r, s, y, _ in VIDEOS if s == split)
        write(root / f"{name}_{kind}_split_1_videos.txt", lines)


@pytest.mark.shared_data
@pytest.mark.parametrize("layout", ["official", "mmaction2 (annotations/)", "mmaction2 lists"])
def test_ucf101_layouts(clips, tmp_path, layout):
    root = tmp_path / "ucf101"
    videos = root / ("UCF-101" if layout == "official" else "videos")
    for rel, _, _, src in VIDEOS:
        link(videos / rel, clips[src])
    if layout == "official":
        ucf_official_files(root / "ucfTrainTestlist")
    elif layout.endswith("(annotations/)"):
        ucf_official_files(root / "annotations")
    else:
        mmaction_lists(root, "ucf101")
    dm = UCF101DataModule(root, cache_dir=tmp_path / "cache", val_fraction=0, **SMALL)
    check(dm, layout, ["Jump", "Run"])


@pytest.mark.shared_data
@pytest.mark.parametrize("layout", ["official", "mmaction2 (annotations/)", "mmaction2 lists"])
def test_hmdb51_layouts(clips, tmp_path, layout):
    root = tmp_path / "hmdb51"
    videos = root if layout == "official" else root / "videos"
    for rel, _, _, src in VIDEOS:
        link(videos / rel.lower(), clips[src])
    if layout == "mmaction2 lists":
        for split, kind in (("train", "train"), ("test", "val")):
            lines = "".join(f"{r.lower()} {y}\n" for r, s, y, _ in VIDEOS if s == split)
            write(root / f"hmdb51_{kind}_split_1_videos.txt", lines)
    else:
        splits = root / ("testTrainMulti_7030_splits" if layout == "official" else "annotations")
        for cls in ("jump", "run"):
            tags = {"train": 1, "test": 2}
            lines = [
                f"{r.split('/')[1].lower()} {tags[s]}\n"
                for r, s, _, _ in VIDEOS
                if r.lower().startswith(cls)
            ]
            write(splits / f"{cls}_test_split1.txt", "".join(lines) + "unused.avi 0\n")
    dm = HMDB51DataModule(root, cache_dir=tmp_path / "cache", val_fraction=0, **SMALL)
    check(dm, layout, ["jump", "run"])


@pytest.mark.shared_data
@pytest.mark.parametrize("layout", ["official", "mmaction2 lists"])
def test_kinetics400_layouts(clips, tmp_path, layout):
    root = tmp_path / "kinetics400"
    ids = {rel: f"id{i}_{i:06d}_{i + 10:06d}.mp4" for i, (rel, *_) in enumerate(VIDEOS)}
    labels = ["jumping", "running"]
    if layout == "official":
        rows = "".join(
            f"{labels[y]},id{i},{i},{i + 10},{s}\n" for i, (_, s, y, _) in enumerate(VIDEOS)
        )
        write(root / "annotations" / "train.csv", "label,youtube_id,time_start,time_end,split\n")
        with (root / "annotations" / "train.csv").open("a") as fh:
            fh.write("".join(r for r in rows.splitlines(True) if ",train\n" in r))
        write(
            root / "annotations" / "validate.csv",
            "label,youtube_id,time_start,time_end,split\n"
            + "".join(r for r in rows.splitlines(True) if ",test\n" in r),
        )
        for rel, s, y, src in VIDEOS:
            link(root / s / labels[y] / ids[rel], clips[src])
    else:
        for split, kind, folder in (
            ("train", "train", "videos_train"),
            ("test", "val", "videos_val"),
        ):
            lines = []
            for rel, s, y, src in VIDEOS:
                if s == split:
                    link(root / folder / labels[y] / ids[rel], clips[src])
                    lines.append(f"{labels[y]}/{ids[rel]} {y}\n")
            lines.append(f"{labels[0]}/removed_from_youtube.mp4 0\n")
            write(root / f"kinetics400_{kind}_list_videos.txt", "".join(lines))
    dm = Kinetics400DataModule(root, cache_dir=tmp_path / "cache", val_fraction=0, **SMALL)
    check(dm, layout, labels)


def test_a_missing_split_names_its_file(tmp_path: Path) -> None:
    from brisk.data.base import DatasetNotFoundError

    ucf_official_files(tmp_path / "ucf" / "ucfTrainTestlist")
    with pytest.raises(DatasetNotFoundError) as err:
        UCF101DataModule(tmp_path / "ucf", split=2, **SMALL).find_videos()
    assert str(tmp_path / "ucf" / "ucfTrainTestlist" / "trainlist02.txt") in str(err.value)
    write(tmp_path / "hmdb" / "testTrainMulti_7030_splits" / "run_test_split1.txt", "a.avi 1\n")
    with pytest.raises(DatasetNotFoundError, match=r"<class>_test_split3.txt"):
        HMDB51DataModule(tmp_path / "hmdb", split=3, **SMALL).find_videos()


def test_a_malformed_split_line_is_one_line_without_download_advice(tmp_path: Path) -> None:
    from brisk.errors import UserError

    d = tmp_path / "ucf" / "ucfTrainTestlist"
    ucf_official_files(d)
    write(d / "trainlist01.txt", "Jump/v_Jump_g01_c01.avi 1\nnot a line\n")
    with pytest.raises(UserError) as err:
        UCF101DataModule(tmp_path / "ucf", **SMALL).find_videos()
    message = str(err.value)
    assert f"{d / 'trainlist01.txt'}:2" in message and "\n" not in message
    assert "download" not in message and "UCF101.rar" not in message
