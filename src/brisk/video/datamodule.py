"""The video DataModule: split files -> cache of compressed-domain clips -> datasets of clip tensors.

Subclasses (one per data set, in :mod:`brisk.video.datasets`) only locate files and parse split files
(:meth:`VideoDataModule.find_videos`); preparation, sampling and augmentation live here.

Items are dicts: ``input`` float32 (C, T, H, W) with T = ``gop_size`` (the I-frame, then the accumulated
residuals) and C = 3, or 5 with ``mv_channels``; ``target`` int; ``rgb`` float32 (3, T, H, W) in [0, 1],
the decoded frames of the same GOP with the same crop and flip; ``video`` the video's index in its split;
``gop`` the GOP index. Training: one item per video, a random GOP with a random scale-jitter crop and
flip, drawn from (seed, epoch, index) so a resumed run sees the same clips. Testing: one item per GOP of
every video (GOPs with fewer than half of ``gop_size`` real frames are skipped unless a video has no
other), centre crop. The validation split is the test split: the official splits of UCF101, HMDB51
and Kinetics-400 have no separate validation set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from brisk.data.base import DataModule, DatasetNotFoundError
from brisk.video.cache import CacheSettings, ClipStore, PrepareReport, VideoCache, prepare
from brisk.video.clips import DEFAULT_SCALES, NORMALIZATIONS, centre_crop, make_clip, random_crop

log = logging.getLogger("brisk.video")


@dataclass(frozen=True)
class VideoEntry:
    """A source video of a split: where it is, its name inside the data set, its label."""

    path: Path
    rel: str
    label: int


@dataclass(frozen=True)
class VideoIndex:
    classes: list[str]
    train: list[VideoEntry]
    test: list[VideoEntry]


@dataclass(frozen=True)
class PreparedVideo:
    rel: str
    label: int
    gop_frames: tuple[int, ...]


class _ClipDataset(Dataset):
    def __init__(
        self,
        videos: list[PreparedVideo],
        store: ClipStore,
        crop_size: int,
        normalization: str,
    ) -> None:
        self.videos, self.store = videos, store
        self.crop_size, self.normalization = crop_size, normalization

    def _item(self, video: int, gop: int, box_fn) -> dict:
        v = self.videos[video]
        arrays = self.store.load(v.rel, gop)
        box = box_fn(*arrays.rgb.shape[1:3])
        clip, rgb = make_clip(arrays, box, self.normalization)
        return {"input": clip, "target": v.label, "rgb": rgb, "video": video, "gop": gop}


class TrainClips(_ClipDataset):
    """One item per video: a random full GOP, scale-jitter crop and flip shared by the whole clip."""

    def __init__(self, *args, scales=DEFAULT_SCALES, flip: bool = True, seed: int = 0) -> None:
        super().__init__(*args)
        self.scales, self.flip, self.seed, self.epoch = tuple(scales), flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
    """One item per GOP of every video, centre crop; ``video`` lets the evaluator pool per video."""

    def __init__(self, *args, gop_size: int = 12) -> None:
        super().__init__(*args)
        min_frames = -(-gop_size // 2)
        self.items = []
        for vi, v in enumerate(self.videos):
            gops = [g for g, n in enumerate(v.gop_frames) if n >= min_frames] or [0]
            self.items += [(vi, g) for g in gops]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        video, gop = self.items[index]
        return self._item(video, gop, lambda h, w: centre_crop(h, w, self.crop_size))


class VideoDataModule(DataModule):
    """Base of the video data sets; see the module docstring for what the items hold.

    Knobs: ``root`` (the data set as users have it on disk), ``split`` (official split number),
    ``resolution`` ([width, height] of the re-encode, CoViAR's 340x256), ``crop_size``, ``gop_size``,
    ``mv_channels`` (append the 2 accumulated-motion channels), ``normalization`` ("mfnet" or
    "centered"), ``scales`` (scale-jitter crop sides, fractions of the short side), ``flip`` (random
    horizontal flips in training; off for data sets where left/right is the label), ``cache_dir``
    (default ``<root>/../cache/<name>``), ``cache_clips`` (store per-GOP arrays: fast, ~0.5 MB per frame at
    340x256; false: keep only re-encoded files and extract clips on the fly), ``num_workers``
    (preparation processes, 0 = in-process), ``qscale`` (encoder quantiser, 1 = best), ``seed``.
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
        )
        self.cache = VideoCache(self.cache_dir, self.settings)
        self.classes: list[str] = []
        self.report: PrepareReport | None = None
        self._splits: dict[str, Dataset] = {}

    # -- to implement per data set -------------------------------------------------------------
    def find_videos(self) -> VideoIndex:
        """Locate the split files and videos; raise :class:`DatasetNotFoundError` when missing."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------
    def missing(self, path: Path, expected: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(self.name, path, expected, self.how_to_get)

    def prepare(self) -> PrepareReport:
        """Build (or complete) the cache for every video of the chosen split; failures are reported."""
        index = self.find_videos()
        self.classes = list(index.classes)
        self.num_classes = len(self.classes)
        jobs, seen = [], set()
        for e in index.train + index.test:
            if e.rel not in seen:
                seen.add(e.rel)
                jobs.append((e.path, e.rel))
        log.info(
            "%s: %d classes, %d train / %d test videos; cache %s",
            self.name,
            self.num_classes,
            len(index.train),
            len(index.test),
            self.cache.root,
        )
        self.report = prepare(self.cache, jobs, workers=self.num_workers, name=self.name)
        self._index = index
        return self.report

    def setup(self) -> None:
        report = self.prepare()
        store = ClipStore(self.cache)

        def usable(entries: list[VideoEntry], split: str) -> list[PreparedVideo]:
            out = [
                PreparedVideo(e.rel, e.label, tuple(report.records[e.rel]["gop_frames"]))
                for e in entries
                if e.rel in report.records
            ]
            if not out:
                raise self.missing(
                    self.root, f"at least one decodable {split} video (all {len(entries)} failed)"
                )
            return out

        train = usable(self._index.train, "train")
        test = usable(self._index.test, "test")
        args = (store, self.crop_size, self.normalization)
        test_set = EvalClips(test, *args, gop_size=self.gop_size)
        self._splits = {
            "train": TrainClips(train, *args, scales=self.scales, flip=self.flip, seed=self.seed),
            "val": test_set,
            "test": test_set,
        }
