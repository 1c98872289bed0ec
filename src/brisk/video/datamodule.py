"""The video DataModule: split files -> cache of compressed-domain clips -> clip tensor datasets.

Subclasses (one per data set, in :mod:`brisk.video.datasets`) only locate files and parse split
files (:meth:`VideoDataModule.find_videos`); preparation, sampling and augmentation live here.

Items are dicts: ``input`` float32 (C, T, H, W) with T = ``gop_size`` (the I-frame, then the
accumulated residuals) and C = 3, or 5 with ``mv_channels``; ``target`` int; ``rgb`` float32 (3, T,
H, W) in [0, 1], the decoded frames of the same GOP with the same crop and flip; ``video`` the
video's index in its split; ``gop`` the GOP index. Training: one item per video, a random GOP with a
random scale-jitter crop and flip, drawn from (seed, epoch, index) so a resumed run sees the same
clips.

Validation and test never share a video. The official splits of UCF101, HMDB51 and Kinetics-400 have
no validation set, so ``val_fraction`` of the training list is held out, per class, with
``val_seed`` (UCF101 keeps the clips of a group together); the test split is the official one and is
never used to choose a checkpoint. With ``val_fraction=0`` the validation items are drawn from the
test videos for monitoring only, and the run reports its last checkpoint (``selected_on: last``).

Evaluation: one item per (video, GOP, crop). GOPs with fewer than half of ``gop_size`` real frames
are skipped unless a video has no other. Validation takes ``val_clips`` uniformly spaced GOPs and
the centre crop; the test takes ``test_clips`` GOPs (``all`` or N uniformly spaced) times
``test_crops`` views (1, 3 or 10, :func:`brisk.video.clips.eval_crop_boxes`). The evaluator averages
the softmax over a video's items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from brisk.data.base import DataModule, DatasetNotFoundError
from brisk.errors import UserError
from brisk.video.cache import (
    CacheSettings,
    ClipStore,
    PrepareReport,
    VideoCache,
    keyframes_of,
    prepare,
)
from brisk.video.clips import (
    DEFAULT_SCALES,
    EVAL_CROPS,
    NORMALIZATIONS,
    CropBox,
    eval_crop_boxes,
    make_clip_u8,
    normalise_clip,
    random_crop,
    rgb_unit,
    squash_box,
)
from brisk.video.codec import KeyframeIndex
from brisk.video.motion import MV_BORDERS
from brisk.video.splits import carve_validation

RESIZES = ("keep_aspect", "squash")

log = logging.getLogger("brisk.video")


@dataclass(frozen=True)
class VideoEntry:
    """A source video of a split: where it is, its name inside the data set, its label, and the
    group of videos cut from the same source (kept on one side of the validation split;
    None = alone)."""

    path: Path
    rel: str
    label: int
    group: str | None = None


@dataclass(frozen=True)
class VideoIndex:
    """What :meth:`VideoDataModule.find_videos` found; ``layout`` names the layout it recognised."""

    classes: list[str]
    train: list[VideoEntry]
    test: list[VideoEntry]
    layout: str = "official"


@dataclass(frozen=True)
class PreparedVideo:
    """A cached video a split serves: its cache key, label and the frame count of each GOP."""

    rel: str
    label: int
    gop_frames: tuple[int, ...]
    # Key-frame positions from the preparation: a cold open seeks without demuxing the file again.
    keyframes: KeyframeIndex | None = None


def uniform_positions(count: int, n: int | None) -> list[int]:
    """``n`` indices spread evenly over ``range(count)`` (segment centres, as TSN samples), or all
    of them when ``n`` is None or at least ``count``."""
    if n is None or n >= count:
        return list(range(count))
    return [int((i + 0.5) * count / n) for i in range(n)]


def frame_box(height: int, width: int, resize: str, draw: Callable[[int, int], CropBox]) -> CropBox:
    """Draw a box on the frame as the model should see it (``squash``: the frame squashed to a
    square of its short side) and return it in the cached frame's coordinates."""
    if resize == "squash":
        short = min(height, width)
        return squash_box(draw(short, short), height, width)
    return draw(height, width)


class _ClipDataset(Dataset):
    def __init__(
        self,
        videos: list[PreparedVideo],
        store: ClipStore,
        crop_size: int,
        normalization: str,
        resize: str = "keep_aspect",
        with_rgb: bool = True,
    ) -> None:
        self.videos, self.store = videos, store
        self.crop_size, self.normalization, self.resize = crop_size, normalization, resize
        self.with_rgb = with_rgb

    def _item(self, video: int, gop: int, box_fn: Callable[[int, int], CropBox]) -> dict:
        v = self.videos[video]
        arrays = self.store.load(v.rel, gop, v.keyframes)
        box = frame_box(*arrays.rgb.shape[1:3], self.resize, box_fn)
        clip, rgb = make_clip_u8(arrays, box, self.with_rgb)
        item = {"input": clip, "target": v.label, "video": video, "gop": gop}
        if rgb is not None:
            item["rgb"] = rgb
        return item


class TrainClips(_ClipDataset):
    """One item per video: a random full GOP, scale-jitter crop and flip shared by the clip."""

    def __init__(
        self, *args, scales=DEFAULT_SCALES, flip: bool = True, seed: int = 0, **kw
    ) -> None:
        super().__init__(*args, **kw)
        self.scales, self.flip, self.seed = tuple(scales), flip, seed
        # In shared memory, so persistent DataLoader workers see the epoch the main process sets
        # (the runner keeps the workers, and their open files, across epochs when shares_epoch).
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.shares_epoch = True

    @property
    def epoch(self) -> int:
        """The epoch the random GOPs and crops are drawn for, shared with the loader's workers."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Called by the runner before each epoch so that every epoch (and a resume) draws anew."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(
            hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF
        )
        frames = self.videos[index].gop_frames
        full = [g for g, n in enumerate(frames) if n == max(frames)]
        gop = full[int(torch.randint(len(full), (1,), generator=gen))]
        return self._item(
            index, gop, lambda h, w: random_crop(h, w, self.crop_size, self.scales, gen, self.flip)
        )


class EvalClips(_ClipDataset):
    """One item per (video, GOP, crop); ``video`` lets the evaluator pool per video.

    ``clips``: None for every usable GOP, or that many uniformly spaced ones; ``crops``: 1, 3 or 10
    views per GOP (:func:`brisk.video.clips.eval_crop_boxes`).
    """

    def __init__(
        self, *args, gop_size: int = 12, clips: int | None = None, crops: int = 1, **kw
    ) -> None:
        super().__init__(*args, **kw)
        self.clips, self.crops = clips, int(crops)
        min_frames = -(-gop_size // 2)
        self.items: list[tuple[int, int, int]] = []
        for vi, v in enumerate(self.videos):
            gops = [g for g, n in enumerate(v.gop_frames) if n >= min_frames] or [0]
            chosen = [gops[i] for i in uniform_positions(len(gops), clips)]
            self.items += [(vi, g, c) for g in chosen for c in range(self.crops)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        video, gop, crop = self.items[index]
        return self._item(
            video, gop, lambda h, w: eval_crop_boxes(h, w, self.crop_size, self.crops)[crop]
        )

    def describe(self) -> str:
        """The protocol in words, for the log: what a reported figure was computed on."""
        gops = "all usable GOPs" if self.clips is None else f"{self.clips} uniform GOPs"
        views = {1: "centre crop", 3: "3 crops (left/centre/right)", 10: "10 crops"}[self.crops]
        return (
            f"{len(self.videos)} videos, {len(self)} clips ({gops} per video x {views}, "
            f"{self.resize}; video score = mean softmax)"
        )


class VideoDataModule(DataModule):
    """Base of the video data sets; see the module docstring for what the items hold.

    Knobs: ``root`` (the data set as users have it on disk), ``split`` (official split number),
    ``resolution`` ([width, height] of the re-encode, CoViAR's 340x256), ``crop_size``,
    ``gop_size``, ``mv_channels`` (append the 2 accumulated-motion channels), ``normalization``
    ("mfnet" or "centered"), ``scales`` (scale-jitter crop sides, fractions of the short side),
    ``flip`` (random horizontal flips in training; off for data sets where left/right is the label),
    ``cache_dir`` (default ``<root>/../cache/<name>``), ``cache_clips`` (store per-GOP arrays: fast,
    ~0.5 MB per frame at 340x256; false: keep only re-encoded files and extract clips on the fly),
    ``num_workers`` (preparation processes, 0 = in-process), ``qscale`` (encoder quantiser, 1 =
    best), ``seed``. Protocol: ``val_fraction`` / ``val_seed`` (validation held out of the training
    list), ``val_clips`` (GOPs per validation video), ``test_clips`` (``"all"`` or N per test
    video), ``test_crops`` (1, 3 or 10), ``resize`` (``keep_aspect`` or ``squash`` to a square
    before cropping), ``mv_border`` (``skip`` or ``clamp``, :mod:`brisk.video.motion`).
    """

    name = "video"
    how_to_get = "put the videos under root"

    def __init__(
        self,
        root: str | Path,
        split: int = 1,
        resolution: tuple[int, int] | list[int] = (340, 256),
        crop_size: int = 224,
        gop_size: int = 12,
        mv_channels: bool = False,
        normalization: str = "mfnet",
        scales: tuple[float, ...] | list[float] = DEFAULT_SCALES,
        flip: bool = True,
        cache_dir: str | Path | None = None,
        cache_clips: bool = True,
        num_workers: int = 2,
        qscale: int = 1,
        seed: int = 0,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        val_clips: int = 3,
        test_clips: int | str = "all",
        test_crops: int = 1,
        resize: str = "keep_aspect",
        mv_border: str = "skip",
        teacher_input: str | None = "rgb",
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"dataset.normalization={normalization!r}: expected one of {NORMALIZATIONS}"
            )
        if len(resolution) != 2 or any(int(r) <= 0 or int(r) % 2 for r in resolution):
            raise ValueError(
                f"dataset.resolution={list(resolution)}: expected [width, height], even"
            )
        if crop_size > min(resolution):
            raise ValueError(
                f"dataset.crop_size={crop_size} exceeds the frame size {list(resolution)}"
            )
        self._check_protocol(val_fraction, val_clips, test_clips, test_crops, resize, mv_border)
        self.val_fraction, self.val_seed = float(val_fraction), int(val_seed)
        self.val_clips = int(val_clips)
        self.test_clips = None if str(test_clips) == "all" else int(test_clips)
        self.test_crops, self.resize = int(test_crops), resize
        self.root = Path(root)
        self.split = int(split)
        self.crop_size, self.gop_size = int(crop_size), int(gop_size)
        self.mv_channels, self.normalization = bool(mv_channels), normalization
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root.parent / "cache" / self.name
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.settings = CacheSettings(
            size=(int(resolution[0]), int(resolution[1])),
            gop_size=self.gop_size,
            qscale=int(qscale),
            motion_vectors=self.mv_channels,
            clips=bool(cache_clips),
            mv_border=mv_border,
        )
        self.cache = VideoCache(self.cache_dir, self.settings)
        # The decoded frames are built only for a teacher that reads them (task/video.yaml passes
        # the teacher's input_key): 9 of a clip's 15-23 ms and half its bytes otherwise.
        if teacher_input not in (None, "rgb"):
            raise UserError(
                f"dataset.teacher_input={teacher_input!r}: expected rgb or null (no teacher)"
            )
        self.with_rgb = teacher_input == "rgb"
        self.classes: list[str] = []
        self.report: PrepareReport | None = None
        self._splits: dict[str, Dataset] = {}
        self._summary: dict[str, Any] = {}

    @staticmethod
    def _check_protocol(
        val_fraction: float,
        val_clips: int,
        test_clips: int | str,
        test_crops: int,
        resize: str,
        mv_border: str,
    ) -> None:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise UserError(f"dataset.val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
        if int(val_clips) < 1:
            raise UserError(f"dataset.val_clips={val_clips}: expected a number of GOPs >= 1")
        if str(test_clips) != "all" and not (str(test_clips).isdigit() and int(test_clips) >= 1):
            raise UserError(f"dataset.test_clips={test_clips}: expected 'all' or a number >= 1")
        if int(test_crops) not in EVAL_CROPS:
            raise UserError(f"dataset.test_crops={test_crops}: expected one of {EVAL_CROPS}")
        if resize not in RESIZES:
            raise UserError(f"dataset.resize={resize!r}: expected one of {RESIZES}")
        if resize == "squash" and int(test_crops) == 3:
            raise UserError(
                "dataset.test_crops=3 with dataset.resize=squash: the three short-side squares of "
                "a squashed (square) frame are the same crop; use test_crops 1 or 10"
            )
        if mv_border not in MV_BORDERS:
            raise UserError(f"dataset.mv_border={mv_border!r}: expected one of {MV_BORDERS}")

    # -- to implement per data set -------------------------------------------------------------
    def find_videos(self) -> VideoIndex:
        """Locate the split files and videos; raise :class:`DatasetNotFoundError` when missing."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------
    def missing(self, path: Path, expected: str) -> DatasetNotFoundError:
        """The error for absent data, naming ``path``, what belongs there and how to get it."""
        return DatasetNotFoundError(self.name, path, expected, self.how_to_get)

    def prepare(self) -> PrepareReport:
        """Build (or complete) the cache of every video of the chosen split, reporting failures."""
        index = self.find_videos()
        self.classes = list(index.classes)
        self.num_classes = len(self.classes)
        jobs, seen = [], set()
        for e in index.train + index.test:
            if e.rel not in seen:
                seen.add(e.rel)
                jobs.append((e.path, e.rel))
        log.info(
            "%s: %s layout, %d classes, %d train / %d test videos; cache %s (paths.cache_dir)",
            self.name,
            index.layout,
            self.num_classes,
            len(index.train),
            len(index.test),
            self.cache.root.resolve(),
        )
        self.report = prepare(self.cache, jobs, workers=self.num_workers, name=self.name)
        self._index = index
        return self.report

    def split_videos(self, index: VideoIndex) -> tuple[list[VideoEntry], list[VideoEntry]]:
        """(train, validation) entries: ``val_fraction`` of the listed training videos, per class
        and by group, with ``val_seed``. Decided on the lists, so a video that fails to decode
        changes nothing else."""
        held = set(
            carve_validation(
                [e.label for e in index.train],
                [e.group for e in index.train],
                self.val_fraction,
                self.val_seed,
            )
        )
        train = [e for i, e in enumerate(index.train) if i not in held]
        val = [e for i, e in enumerate(index.train) if i in held]
        return train, val

    def setup(self) -> None:
        """Prepare the cache (see :meth:`prepare`) and build the train, validation and test splits.

        Videos that failed to prepare are left out; a split left empty raises
        :class:`DatasetNotFoundError`.
        """
        report = self.prepare()
        store = ClipStore(self.cache)

        def usable(entries: list[VideoEntry], split: str) -> list[PreparedVideo]:
            out = [
                PreparedVideo(
                    e.rel,
                    e.label,
                    tuple(report.records[e.rel]["gop_frames"]),
                    keyframes_of(report.records[e.rel]),
                )
                for e in entries
                if e.rel in report.records
            ]
            if not out:
                hint = " (or set dataset.val_fraction=0)" if split == "validation" else ""
                raise self.missing(
                    self.root,
                    f"at least one decodable {split} video (all {len(entries)} failed){hint}",
                )
            return out

        train_entries, val_entries = self.split_videos(self._index)
        train = usable(train_entries, "train")
        test = usable(self._index.test, "test")
        args = (store, self.crop_size, self.normalization)
        kw = {"gop_size": self.gop_size, "resize": self.resize, "with_rgb": self.with_rgb}
        test_set = EvalClips(test, *args, clips=self.test_clips, crops=self.test_crops, **kw)
        if val_entries:
            val_set = EvalClips(
                usable(val_entries, "validation"), *args, clips=self.val_clips, **kw
            )
            selected_on = "val"
        else:  # val_fraction=0: the test videos are watched, never used to choose a checkpoint
            val_set = EvalClips(test, *args, clips=self.val_clips, **kw)
            selected_on = "last"
        self._splits = {
            "train": TrainClips(
                train,
                *args,
                scales=self.scales,
                flip=self.flip,
                seed=self.seed,
                resize=self.resize,
                with_rgb=self.with_rgb,
            ),
            "val": val_set,
            "test": test_set,
        }
        self._summary = {
            "layout": self._index.layout,
            "train_videos": len(train),
            "val_videos": len(val_set.videos) if selected_on == "val" else 0,
            "test_videos": len(test),
            "selected_on": selected_on,
            "val_protocol": val_set.describe(),
            "test_protocol": test_set.describe(),
            "test_clips_evaluated": len(test_set),
            "mv_border": self.settings.mv_border,
            # the label of each output of the network, for classify-video and exported models
            "classes": list(self.classes),
        }
        log.info(
            "%s: %d train videos; validation %s%s; test %s",
            self.name,
            len(train),
            val_set.describe(),
            "" if selected_on == "val" else " (test videos, monitoring only: val_fraction=0)",
            test_set.describe(),
        )

    def on_device_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Finish a batch once it is on the training device: uint8 clips become the network input.

        Items travel through the DataLoader as uint8 (:func:`brisk.video.clips.make_clip_u8`), a
        quarter of the float32 bytes to pickle, collate, pin and copy; normalising there is a few
        elementwise operations on the accelerator.
        """
        out = dict(batch)
        if out["input"].dtype == torch.uint8:
            out["input"] = normalise_clip(out["input"], self.normalization)
        if "rgb" in out and out["rgb"].dtype == torch.uint8:
            out["rgb"] = rgb_unit(out["rgb"])
        return out

    def split_summary(self) -> dict[str, Any]:
        """What status.json records about the evaluation: video counts per split, the protocol and
        ``selected_on`` (``val``: the reported checkpoint was chosen on held-out training videos;
        ``last``: no selection, the last checkpoint is reported)."""
        if not self._summary:
            raise RuntimeError(f"{type(self).__name__}: call setup() before split_summary()")
        return dict(self._summary)
