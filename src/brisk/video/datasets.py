"""The video ``dataset=`` options: UCF101, HMDB51, Kinetics-400, a folder of videos, moving_shapes.

Each class only knows where its data set keeps split files and videos and how to read them;
everything else is :class:`brisk.video.datamodule.VideoDataModule`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brisk.errors import UserError
from brisk.video import synthetic
from brisk.video.cache import VideoCache, source_folder_key
from brisk.video.datamodule import VideoDataModule, VideoEntry, VideoIndex
from brisk.video.settings import MovingShapesSettings, OfficialSplitSettings, VideoFolderSettings
from brisk.video.splits import (
    SplitFileError,
    classes_from_lists,
    folder_split,
    parse_hmdb51,
    parse_kinetics_csv,
    parse_label_list,
    parse_ucf101,
    ucf101_group,
)

log = logging.getLogger("brisk.video")


def _first_dir(candidates: list[Path], marker) -> Path | None:
    for c in candidates:
        if c.is_dir() and marker(c):
            return c
    return None


def _first_file(dirs: list[Path], names: list[str]) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _mmaction_split_lists(root: Path, name: str, split: int) -> tuple[Path, Path] | None:
    """MMAction2's generated ``<name>_{train,val|test}_split_<N>_videos.txt``, in ``root`` or
    ``root/annotations``; None unless both the training and the test list are there."""
    dirs = [root, root / "annotations"]
    train = _first_file(dirs, [f"{name}_train_split_{split}_videos.txt"])
    test = _first_file(
        dirs, [f"{name}_val_split_{split}_videos.txt", f"{name}_test_split_{split}_videos.txt"]
    )
    return (train, test) if train and test else None


def _locate(rel: str, dirs: list[Path]) -> Path | None:
    """The first ``dir / rel`` that exists."""
    return next((d / rel for d in dirs if (d / rel).is_file()), None)


def _from_mmaction_lists(
    dm: VideoDataModule,
    train_list: Path,
    test_list: Path,
    video_dirs: dict[str, list[Path]],
    group=None,
) -> VideoIndex:
    """MMAction2's ``<path> <label>`` lists: class names from the video folders, paths resolved
    against ``video_dirs[kind]`` (the first folder holding the file; listed videos absent from
    every folder are counted in the log and left out, as removed YouTube clips are)."""
    try:
        lists = {"train": parse_label_list(train_list), "test": parse_label_list(test_list)}
        classes = classes_from_lists(lists["train"], lists["test"], path=train_list)
    except SplitFileError as exc:
        raise _malformed(dm, exc) from exc
    out: dict[str, list[VideoEntry]] = {}
    for kind, items in lists.items():
        entries, absent = [], 0
        for rel, label in items:
            path = _locate(rel, video_dirs[kind])
            if path is None:
                absent += 1
                continue
            entries.append(VideoEntry(path, rel, label, group(rel) if group else None))
        if absent:
            log.info("%s %s: %d of %d listed videos not found", dm.name, kind, absent, len(items))
        out[kind] = entries
    if not out["train"] and not out["test"]:
        raise dm.missing(
            video_dirs["train"][0], f"the videos listed in {train_list.name} and {test_list.name}"
        )
    return VideoIndex(classes, out["train"], out["test"], f"mmaction2 lists ({train_list.name})")


def _malformed(dm: VideoDataModule, exc: SplitFileError) -> UserError:
    """A split file that is there but does not parse: the file, the line and the format expected
    (no download advice: the data set was found)."""
    return UserError(f"{dm.name}: malformed split file: {exc}")


def _missing_split(dm: VideoDataModule, dirs: list[Path], present: str, wanted: str, note: str):
    """The split-N files are missing beside another split's: name the file that is not there."""
    d = next((d for d in dirs if d.is_dir() and any(d.glob(present))), None)
    if d is None:
        return None
    return dm.missing(d / wanted, f"dataset.split={dm.split} reads {wanted} here; {note}")


def _require_official_split(split: int, dataset: str) -> None:
    """UCF101 and HMDB51 publish three train/test splits; any other number is a typo."""
    if split not in (1, 2, 3):
        raise UserError(f"dataset.split={split}: {dataset} has splits 1, 2 and 3")


class UCF101DataModule(VideoDataModule):
    """UCF101: split files in ``root/ucfTrainTestlist/``, videos in ``root/UCF-101/<Class>/``.

    The split files are ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``.
    """

    name = "ucf101"
    settings_class = OfficialSplitSettings
    how_to_get = (
        "download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
        "https://www.crcv.ucf.edu/data/UCF101.php and unpack both into root"
    )

    layouts = (
        "ucfTrainTestlist/classInd.txt, trainlist0N.txt, testlist0N.txt (N = 1..3) and the "
        "videos as UCF-101/<Class>/<video>.avi; or MMAction2's annotations/ (the same files) "
        "with videos/<Class>/<video>.avi, or its ucf101_{train,val}_split_N_videos.txt lists"
    )

    def find_videos(self) -> VideoIndex:
        """The official split ``split`` (1-3), or MMAction2's annotation files or video lists."""
        _require_official_split(self.split, "UCF101")
        expected = self.layouts
        split_dir = _first_dir(
            [self.root / "ucfTrainTestlist", self.root / "annotations", self.root],
            lambda d: (
                (d / "classInd.txt").is_file() and (d / f"trainlist0{self.split}.txt").is_file()
            ),
        )
        if split_dir is None:
            lists = self._mmaction_lists()
            if lists is not None:
                return _from_mmaction_lists(
                    self, *lists, {k: self._video_dirs() for k in ("train", "test")}, ucf101_group
                )
            other = _missing_split(
                self,
                [self.root / "ucfTrainTestlist", self.root / "annotations", self.root],
                "classInd.txt",
                f"trainlist0{self.split}.txt",
                "UCF101TrainTestSplits-RecognitionTask.zip holds trainlist0N.txt and "
                "testlist0N.txt for N = 1, 2 and 3",
            )
            raise other or self.missing(self.root, expected)
        if not (split_dir / f"testlist0{self.split}.txt").is_file():
            raise self.missing(split_dir / f"testlist0{self.split}.txt", expected)
        try:
            split = parse_ucf101(split_dir, self.split)
        except SplitFileError as exc:
            raise _malformed(self, exc) from exc
        first = split.train[0][0] if split.train else split.test[0][0]
        video_dir = _first_dir(self._video_dirs(), lambda d: (d / first.split("/")[0]).is_dir())
        if video_dir is None:
            raise self.missing(self.root / "UCF-101", expected)

        def entries(items):
            return [VideoEntry(video_dir / rel, rel, y, ucf101_group(rel)) for rel, y in items]

        layout = "official" if split_dir.name != "annotations" else "mmaction2 (annotations/)"
        return VideoIndex(split.classes, entries(split.train), entries(split.test), layout)

    def _video_dirs(self) -> list[Path]:
        return [self.root / "UCF-101", self.root / "UCF101", self.root / "videos", self.root]

    def _mmaction_lists(self) -> tuple[Path, Path] | None:
        return _mmaction_split_lists(self.root, "ucf101", self.split)


class HMDB51DataModule(VideoDataModule):
    """HMDB51: split files in ``root/testTrainMulti_7030_splits/``, videos in ``root/<class>/``.

    The split files are ``<class>_test_splitN.txt``; videos are ``root/<class>/<video>.avi``.

    Tag 1 = train, 2 = test; tag-0 ("unused") videos are neither prepared nor evaluated.
    """

    name = "hmdb51"
    settings_class = OfficialSplitSettings
    how_to_get = (
        "download hmdb51_org.rar and test_train_splits.rar from "
        "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/, unpack the "
        "per-class .rar files into root/<class>/ and the splits into "
        "root/testTrainMulti_7030_splits/"
    )

    layouts = (
        "testTrainMulti_7030_splits/<class>_test_splitN.txt (N = 1..3) and the videos as "
        "<class>/<video>.avi; or MMAction2's annotations/ (the same files) with "
        "videos/<class>/<video>.avi, or its hmdb51_{train,val}_split_N_videos.txt lists"
    )

    def find_videos(self) -> VideoIndex:
        """The official split ``split`` (1-3), or MMAction2's annotation files or video lists."""
        _require_official_split(self.split, "HMDB51")
        expected = self.layouts
        pattern = f"*_test_split{self.split}.txt"
        split_dir = _first_dir(
            [
                self.root / "testTrainMulti_7030_splits",
                self.root / "annotations",
                self.root / "splits",
                self.root,
            ],
            lambda d: any(d.glob(pattern)),
        )
        if split_dir is None:
            lists = self._mmaction_lists()
            if lists is not None:
                return _from_mmaction_lists(
                    self, *lists, {k: self._video_dirs() for k in ("train", "test")}
                )
            other = _missing_split(
                self,
                [self.root / n for n in ("testTrainMulti_7030_splits", "annotations", "splits")]
                + [self.root],
                "*_test_split[123].txt",
                f"<class>_test_split{self.split}.txt",
                "test_train_splits.rar holds <class>_test_splitN.txt for N = 1, 2 and 3",
            )
            raise other or self.missing(self.root, expected)
        try:
            split = parse_hmdb51(split_dir, self.split)
        except SplitFileError as exc:
            raise _malformed(self, exc) from exc
        video_dir = _first_dir(self._video_dirs(), lambda d: (d / split.classes[0]).is_dir())
        if video_dir is None:
            raise self.missing(self.root / split.classes[0], expected)

        def entries(items):
            return [VideoEntry(video_dir / rel, rel, label) for rel, label in items]

        layout = "official" if split_dir.name != "annotations" else "mmaction2 (annotations/)"
        return VideoIndex(split.classes, entries(split.train), entries(split.test), layout)

    def _video_dirs(self) -> list[Path]:
        return [self.root / "hmdb51_org", self.root / "videos", self.root]

    def _mmaction_lists(self) -> tuple[Path, Path] | None:
        return _mmaction_split_lists(self.root, "hmdb51", self.split)


class Kinetics400DataModule(VideoDataModule):
    """Kinetics-400: ``root/annotations/{train,validate|val}.csv`` + clips named
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under root (class folders optional).

    Test = the validation CSV (the official test CSV has no labels). Clips missing from disk are
    normal (YouTube removals): they are counted and logged, not reported as failures.
    """

    name = "kinetics400"
    how_to_get = (
        "download the clips with a Kinetics crawler (e.g. cvdfoundation/kinetics-dataset) and "
        "put the annotation CSVs (train.csv, validate.csv) into root/annotations/"
    )

    def find_videos(self) -> VideoIndex:
        """Train and validation CSVs (or MMAction2's lists); only clips found on disk are listed."""
        expected = (
            "annotations/train.csv and annotations/validate.csv (or val.csv) with header "
            "label,youtube_id,time_start,time_end,split, and clips "
            "<youtube_id>_<start:06d>_<end:06d>.mp4;"
            " or MMAction2's kinetics400_{train,val}_list_videos.txt ('<path> <label>') with the "
            "videos under videos_train/ and videos_val/"
        )
        ann = _first_dir(
            [self.root / "annotations", self.root], lambda d: (d / "train.csv").is_file()
        )
        if ann is None:
            dirs = [self.root, self.root / "annotations"]
            train_list = _first_file(dirs, ["kinetics400_train_list_videos.txt"])
            val_list = _first_file(dirs, ["kinetics400_val_list_videos.txt"])
            if train_list and val_list:
                videos = {
                    "train": [self.root / "videos_train", self.root / "train", self.root],
                    "test": [self.root / "videos_val", self.root / "val", self.root],
                }
                return _from_mmaction_lists(self, train_list, val_list, videos)
            raise self.missing(self.root / "annotations", expected)
        val_csv = next((ann / n for n in ("validate.csv", "val.csv") if (ann / n).is_file()), None)
        if val_csv is None:
            raise self.missing(ann / "validate.csv", expected)
        try:
            train_clips = parse_kinetics_csv(ann / "train.csv")
            val_clips = parse_kinetics_csv(val_csv)
        except SplitFileError as exc:
            raise _malformed(self, exc) from exc
        if any(c.label is None for c in train_clips + val_clips):
            raise self.missing(ann, f"{expected}; a CSV without a 'label' column")
        classes = sorted({c.label for c in train_clips})
        label_of = {c: i for i, c in enumerate(classes)}
        cache_root = self.cache_dir.resolve()
        on_disk = {}
        for p in self.root.rglob("*"):
            if p.is_file() and p.suffix.lower() != ".csv" and cache_root not in p.resolve().parents:
                on_disk.setdefault(p.stem, p)

        def entries(clips, kind):
            out, absent, unknown = [], 0, 0
            for c in clips:
                path = on_disk.get(c.filename_stem)
                if c.label not in label_of:
                    unknown += 1
                elif path is None:
                    absent += 1
                else:
                    out.append(
                        VideoEntry(path, path.relative_to(self.root).as_posix(), label_of[c.label])
                    )
            log.info(
                "kinetics400 %s: %d of %d clips present "
                "(%d absent, %d with a label unknown to train)",
                kind,
                len(out),
                len(clips),
                absent,
                unknown,
            )
            return out

        train = entries(train_clips, "train")
        test = entries(val_clips, "val")
        if not train and not test:
            raise self.missing(self.root, f"{expected}; no listed clip was found on disk")
        return VideoIndex(classes, train, test, "official (annotation CSVs)")


class VideoFolderDataModule(VideoDataModule):
    """Any folder ``root/<class>/<video>`` (any extension), split per class with a fixed seed."""

    name = "video_folder"
    how_to_get = "arrange your videos as root/<class name>/<video file>"

    settings_class = VideoFolderSettings

    def __init__(self, root, **options) -> None:
        super().__init__(root, **options)
        assert isinstance(self.config, VideoFolderSettings)
        self.test_fraction, self.split_seed = self.config.test_fraction, self.config.split_seed
        # any folder can be the source: key the cache by it, not only by the encoding settings
        self.cache = VideoCache(self.cache_dir / source_folder_key(self.root), self.settings)

    def find_videos(self) -> VideoIndex:
        """Classes are the sub-folders; the split depends only on the file names and the seed."""
        expected = "one sub-folder per class holding that class's videos: <class>/<video>"
        if not self.root.is_dir():
            raise self.missing(self.root, expected)
        split = folder_split(self.root, self.test_fraction, self.split_seed)
        if not split.classes or not split.train:
            raise self.missing(self.root, expected)

        def entries(items):
            return [VideoEntry(self.root / rel, rel, label) for rel, label in items]

        return VideoIndex(split.classes, entries(split.train), entries(split.test), "class folders")


class MovingShapesDataModule(VideoDataModule):
    """Synthetic clips, generated under ``root`` on first use (:mod:`~brisk.video.synthetic`)."""

    name = "moving_shapes"
    how_to_get = "nothing to get: it is generated on first use"

    settings_class = MovingShapesSettings

    def __init__(self, root, **options) -> None:
        super().__init__(root, **options)
        config = self.config
        assert isinstance(config, MovingShapesSettings)
        self.counts = {"train": int(config.train_per_class), "test": int(config.test_per_class)}
        self.frames, self.size = int(config.frames), int(config.size)
        self.generator_seed = int(config.generator_seed)

    def find_videos(self) -> VideoIndex:
        """Generate the videos if needed (unchanged parameters reuse them) and list both splits."""
        videos = synthetic.generate(
            self.root, self.counts, self.frames, self.size, self.generator_seed
        )
        classes = list(synthetic.CLASSES)

        def entries(split):
            return [
                VideoEntry(p, p.relative_to(videos).as_posix(), label)
                for label, cls in enumerate(classes)
                for p in sorted((videos / split / cls).glob("*.avi"))
            ]

        return VideoIndex(classes, entries("train"), entries("test"), "generated")
