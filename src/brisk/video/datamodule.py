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
from brisk.tempfiles import PART_TEMPORARY, remove_stale
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
    CropBox,
    eval_crop_boxes,
    make_clip_u8,
    normalise_clip,
    random_crop,
    rgb_unit,
    squash_box,
)
from brisk.video.codec import KeyframeIndex
from brisk.video.settings import VideoDatasetSettings, settings_from
from brisk.video.splits import carve_validation

log = logging.getLogger("brisk.video")

# A cache temporary is stale when its writer is gone and it was not touched for this long: one
# video's arrays or re-encode take seconds to minutes, and a process id cannot tell whether a writer
# on another machine sharing the cache is alive.
STALE_PART_S = 3600.0


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

    Its keys, their defaults and their checks are :attr:`settings_class`
    (:mod:`brisk.video.settings`); ``config`` holds them.
    """

    name = "video"
    how_to_get = "put the videos under root"
    #: the schema of this data set's keys (``dataset=`` YAML and Python arguments alike)
    settings_class: type[VideoDatasetSettings] = VideoDatasetSettings

    def __init__(self, root: str | Path, **options: Any) -> None:
        # every check of every key: VideoDatasetSettings.__post_init__ (one user error naming them)
        config = settings_from(self.settings_class, root=str(root), **options)
        self.config = config
        self.val_fraction, self.val_seed = float(config.val_fraction), int(config.val_seed)
        self.val_clips = int(config.val_clips)
        self.test_clips = None if str(config.test_clips) == "all" else int(config.test_clips)
        self.test_crops, self.resize = int(config.test_crops), config.resize
        self.root = Path(root)
        self.split = int(getattr(config, "split", 1))  # the data sets with official splits
        self.crop_size, self.gop_size = int(config.crop_size), int(config.gop_size)
        self.mv_channels, self.normalization = bool(config.mv_channels), config.normalization
        self.scales = tuple(float(s) for s in config.scales)
        self.flip = bool(config.flip)
        self.cache_dir = (
            Path(config.cache_dir) if config.cache_dir else self.root.parent / "cache" / self.name
        )
        self.num_workers, self.seed = int(config.num_workers), int(config.seed)
        self.settings = CacheSettings(
            size=(int(config.resolution[0]), int(config.resolution[1])),
            gop_size=self.gop_size,
            qscale=int(config.qscale),
            motion_vectors=self.mv_channels,
            clips=bool(config.cache_clips),
            mv_border=config.mv_border,
        )
        self.cache = VideoCache(self.cache_dir, self.settings)
        # The decoded frames are built only for a teacher that reads them (task/video.yaml passes
        # the teacher's input_key): 9 of a clip's 15-23 ms and half its bytes otherwise.
        self.with_rgb = config.teacher_input == "rgb"
        self.classes: list[str] = []
        self.report: PrepareReport | None = None
        self._splits: dict[str, Dataset] = {}
        self._summary: dict[str, Any] = {}

    # -- to implement per data set -------------------------------------------------------------
    def find_videos(self) -> VideoIndex:
        """Locate the split files and videos; raise :class:`DatasetNotFoundError` when missing."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------
    def missing(self, path: Path, expected: str) -> DatasetNotFoundError:
        """The error for absent data, naming ``path``, what belongs there and how to get it."""
        return DatasetNotFoundError(self.name, path, expected, self.how_to_get)

    def prepare(self) -> PrepareReport:
        """Build (or complete) the cache of every video of the chosen split, reporting failures.

        Temporary files that a killed preparation left in the cache are removed first: those whose
        writing process is gone and that were not touched for an hour (a live preparation, here
        or on another machine sharing the cache, keeps its own).
        """
        remove_stale([self.cache.root], PART_TEMPORARY, recursive=True, min_age_s=STALE_PART_S)
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
