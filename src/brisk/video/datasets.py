"""The ``dataset=`` options for video: UCF101, HMDB51, Kinetics-400, a folder of videos, moving_shapes.

Each class only knows where its data set keeps split files and videos and how to read them; everything
else is :class:`brisk.video.datamodule.VideoDataModule`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brisk.video import synthetic
from brisk.video.cache import VideoCache, source_folder_key
from brisk.video.datamodule import VideoDataModule, VideoEntry, VideoIndex
from brisk.video.splits import (
    SplitFileError,
    folder_split,
    parse_hmdb51,
    parse_kinetics_csv,
    parse_ucf101,
)

log = logging.getLogger("brisk.video")


def _first_dir(candidates: list[Path], marker) -> Path | None:
    for c in candidates:
        if c.is_dir() and marker(c):
            return c
    return None


class UCF101DataModule(VideoDataModule):
    """UCF101: ``root/ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt`` + ``root/UCF-101/<Class>/``."""

    name = "ucf101"
    how_to_get = (
        "download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
        "https://www.crcv.ucf.edu/data/UCF101.php and unpack both into root"
    )

    def find_videos(self) -> VideoIndex:
        expected = (
            "ucfTrainTestlist/classInd.txt, trainlist0N.txt, testlist0N.txt (N = 1..3) and the "
            "videos as UCF-101/<Class>/<video>.avi"
        )
        if self.split not in (1, 2, 3):
            raise ValueError(f"dataset.split={self.split}: UCF101 has splits 1, 2 and 3")
        split_dir = _first_dir(
            [self.root / "ucfTrainTestlist", self.root], lambda d: (d / "classInd.txt").is_file()
        )
        if split_dir is None:
            raise self.missing(self.root, expected)
        for kind in ("train", "test"):
            if not (split_dir / f"{kind}list0{self.split}.txt").is_file():
                raise self.missing(split_dir / f"{kind}list0{self.split}.txt", expected)
        try:
            split = parse_ucf101(split_dir, self.split)
        except SplitFileError as exc:
            raise self.missing(split_dir, f"{expected}; {exc}") from exc
        first = split.train[0][0] if split.train else split.test[0][0]
        video_dir = _first_dir(
            [self.root / "UCF-101", self.root / "UCF101", self.root],
            lambda d: (d / first.split("/")[0]).is_dir(),
        )
        if video_dir is None:
            raise self.missing(self.root / "UCF-101", expected)

        def entries(items):
            return [VideoEntry(video_dir / rel, rel, label) for rel, label in items]

        return VideoIndex(split.classes, entries(split.train), entries(split.test))


class HMDB51DataModule(VideoDataModule):
    """HMDB51: ``root/testTrainMulti_7030_splits/<class>_test_splitN.txt`` + ``root/<class>/<video>.avi``.

    Tag 1 = train, 2 = test; tag-0 ("unused") videos are neither prepared nor evaluated.
    """

    name = "hmdb51"
    how_to_get = (
        "download hmdb51_org.rar and test_train_splits.rar from "
        "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/, unpack the "
        "per-class .rar files into root/<class>/ and the splits into root/testTrainMulti_7030_splits/"
    )

    def find_videos(self) -> VideoIndex:
        expected = (
            "testTrainMulti_7030_splits/<class>_test_splitN.txt (N = 1..3) and the videos as "
            "<class>/<video>.avi"
        )
        if self.split not in (1, 2, 3):
            raise ValueError(f"dataset.split={self.split}: HMDB51 has splits 1, 2 and 3")
        pattern = f"*_test_split{self.split}.txt"
        split_dir = _first_dir(
            [self.root / "testTrainMulti_7030_splits", self.root / "splits", self.root],
            lambda d: any(d.glob(pattern)),
        )
        if split_dir is None:
            raise self.missing(self.root, expected)
        try:
            split = parse_hmdb51(split_dir, self.split)
        except SplitFileError as exc:
            raise self.missing(split_dir, f"{expected}; {exc}") from exc
        video_dir = _first_dir(
            [self.root / "hmdb51_org", self.root / "videos", self.root],
            lambda d: (d / split.classes[0]).is_dir(),
        )
        if video_dir is None:
            raise self.missing(self.root / split.classes[0], expected)

        def entries(items):
            return [VideoEntry(video_dir / rel, rel, label) for rel, label in items]

        return VideoIndex(split.classes, entries(split.train), entries(split.test))


class Kinetics400DataModule(VideoDataModule):
    """Kinetics-400: ``root/annotations/{train,validate|val}.csv`` + clips named
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under root (class folders optional).

    Test = the validation CSV (the official test CSV has no labels). Clips missing from disk are normal
    (YouTube removals): they are counted and logged, not reported as failures.
    """

    name = "kinetics400"
    how_to_get = (
        "download the clips with a Kinetics crawler (e.g. cvdfoundation/kinetics-dataset) and put the "
        "annotation CSVs (train.csv, validate.csv) into root/annotations/"
    )

    def find_videos(self) -> VideoIndex:
        expected = (
            "annotations/train.csv and annotations/validate.csv (or val.csv) with header "
            "label,youtube_id,time_start,time_end,split, and clips <youtube_id>_<start:06d>_<end:06d>.mp4"
        )
        ann = _first_dir(
            [self.root / "annotations", self.root], lambda d: (d / "train.csv").is_file()
        )
        if ann is None:
            raise self.missing(self.root / "annotations", expected)
        val_csv = next((ann / n for n in ("validate.csv", "val.csv") if (ann / n).is_file()), None)
        if val_csv is None:
            raise self.missing(ann / "validate.csv", expected)
        try:
            train_clips = parse_kinetics_csv(ann / "train.csv")
            val_clips = parse_kinetics_csv(val_csv)
        except SplitFileError as exc:
            raise self.missing(ann, f"{expected}; {exc}") from exc
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
                "kinetics400 %s: %d of %d clips present (%d absent, %d with a label unknown to train)",
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
        return VideoIndex(classes, train, test)


class VideoFolderDataModule(VideoDataModule):
    """Any folder ``root/<class>/<video>`` (any extension): a fixed-seed per-class train/test split."""

    name = "video_folder"
    how_to_get = "arrange your videos as root/<class name>/<video file>"

    def __init__(self, root, test_fraction: float = 0.3, split_seed: int = 0, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.test_fraction, self.split_seed = float(test_fraction), int(split_seed)
        # any folder can be the source: key the cache by it, not only by the encoding settings
        self.cache = VideoCache(self.cache_dir / source_folder_key(self.root), self.settings)

    def find_videos(self) -> VideoIndex:
        expected = "one sub-folder per class holding that class's videos: <class>/<video>"
        if not self.root.is_dir():
            raise self.missing(self.root, expected)
        split = folder_split(self.root, self.test_fraction, self.split_seed)
        if not split.classes or not split.train:
            raise self.missing(self.root, expected)

        def entries(items):
            return [VideoEntry(self.root / rel, rel, label) for rel, label in items]

        return VideoIndex(split.classes, entries(split.train), entries(split.test))


class MovingShapesDataModule(VideoDataModule):
    """The synthetic data set, generated under ``root`` on first use (see :mod:`brisk.video.synthetic`)."""

    name = "moving_shapes"
    how_to_get = "nothing to get: it is generated on first use"

    def __init__(
        self,
        root,
        train_per_class: int = 16,
        test_per_class: int = 6,
        frames: int = 36,
        size: int = 64,
        generator_seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("resolution", (size, size))
        kwargs.setdefault("crop_size", 56)
        # Mirroring turns "move right" into "move left" and clockwise into anticlockwise.
        kwargs.setdefault("flip", False)
        super().__init__(root, **kwargs)
        self.counts = {"train": int(train_per_class), "test": int(test_per_class)}
        self.frames, self.size, self.generator_seed = int(frames), int(size), int(generator_seed)

    def find_videos(self) -> VideoIndex:
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

        return VideoIndex(classes, entries("train"), entries("test"))
