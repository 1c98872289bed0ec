"""The video data sets' settings, declared once: the ``dataset=`` schema, its defaults, its checks.

``conf/dataset/{ucf101,hmdb51,kinetics400,video_folder,moving_shapes}.yaml`` extend these nodes
(``dataset/base_video``, ``base_video_split``, ``base_moving_shapes``, ``base_video_folder``), so
the YAML files keep only what differs (target, root, cache folder, a few defaults) and a misspelt
key fails at composition.
:class:`~brisk.video.datamodule.VideoDataModule` builds the same dataclass from its arguments, so
every check lives in one ``__post_init__`` and Python callers get the same one-line
:class:`~brisk.errors.UserError` as the command line.

This module imports nothing heavy (no torch, no PyAV): the config tree registers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from brisk.errors import ConfigValueError

NORMALIZATIONS = ("mfnet", "centered")
EVAL_CROPS = (1, 3, 10)
RESIZES = ("keep_aspect", "squash")
MV_BORDERS = ("skip", "clamp")
TEACHER_INPUTS = ("rgb",)
DEFAULT_SCALES = (1.0, 0.875, 0.75, 0.66)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


@dataclass
class VideoDatasetSettings:
    """Keys every video data set has; defaults are those of the real data sets (UCF101 & co)."""

    _target_: str = "???"  # the data module class; each YAML names its own
    root: str = "???"  # the data set as users have it on disk
    resolution: list[int] = field(default_factory=lambda: [340, 256])  # re-encode [width, height]
    crop_size: int = 224
    gop_size: int = 12  # frames per clip: the I-frame then gop_size - 1 accumulated residuals
    mv_channels: bool = False  # true: 5 input channels (I + R + accumulated motion x, y)
    # mfnet: (u8 - [124,117,104]) * 0.0167 for I and residual; centered: residual (u8 - 128) *
    # 0.0167, so a zero residual is 0
    normalization: str = "mfnet"
    # scale-jitter crop sides (fractions of the short side)
    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))
    flip: bool = True  # random horizontal flip in training (negates the x motion)
    cache_dir: str | None = None  # the conf files put it under paths.cache_dir
    # true: also store per-GOP clip arrays, ~0.5 MB per frame at 340x256 (UCF101 about 1.3 TB),
    # for sub-millisecond clip loading; false decodes clips from the re-encoded videos
    cache_clips: bool = False
    num_workers: int = 2  # processes preparing the cache (0: in-process)
    qscale: int = 1  # MPEG-4 quantiser of the re-encode (1 = highest quality)
    seed: int = 0  # seeds GOP choice, crops and flips from (seed, epoch, index)
    # evaluation protocol (docs/video.md): validation is held out of the training list
    val_fraction: float = 0.1  # per class (UCF101: by group); 0: no validation, last checkpoint
    val_seed: int = 0  # fixes which videos are held out (independent of the run's seed)
    val_clips: int = 3  # GOPs per validation video, uniformly spaced, centre crop
    test_clips: Any = "all"  # GOPs per test video: all (MFCD-Net's protocol) or N uniformly spaced
    # views per test clip: 1 centre; 3 left/centre/right squares of the short side; 10 corners +
    # centre and their flips (TSN, CoViAR)
    test_crops: int = 1
    # keep_aspect: crop the re-encoded frame; squash: to a square first (MFCD-Net's 256x256)
    resize: str = "keep_aspect"
    mv_border: str = "skip"  # a motion vector pointing outside the frame: skip (CoViAR) or clamp
    teacher_input: str | None = "rgb"  # the teacher's input (task=video sets it); null: none

    def __post_init__(self) -> None:
        for key in ("resolution", "scales"):  # Hydra passes a ListConfig, Python callers tuples
            value = getattr(self, key)
            if not isinstance(value, str | list) and hasattr(value, "__iter__"):
                setattr(self, key, list(value))
        problems = list(self.problems())
        if problems:
            head = "invalid config value" if len(problems) == 1 else "invalid config values"
            raise ConfigValueError(f"{head}: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        """Every key out of its range, as ``dataset.key=value (expected ...)``."""
        out: list[str] = []

        def bad(key: str, expected: str) -> None:
            out.append(f"dataset.{key}={getattr(self, key)!r} (expected {expected})")

        res = list(self.resolution) if isinstance(self.resolution, list) else []
        if len(res) != 2 or not all(_is_int(r) and r >= 2 and r % 2 == 0 for r in res):
            bad("resolution", "[width, height], even integers >= 2")
        for key, low in (("crop_size", 1), ("gop_size", 2), ("val_clips", 1), ("num_workers", 0)):
            if not _is_int(getattr(self, key)) or getattr(self, key) < low:
                bad(key, f"an integer >= {low}")
        if len(res) == 2 and _is_int(self.crop_size) and self.crop_size > min(res):
            bad("crop_size", f"at most the short side of dataset.resolution={res}")
        if not _is_int(self.qscale) or not 1 <= self.qscale <= 31:
            bad("qscale", "an integer in [1, 31]")
        scales = list(self.scales) if isinstance(self.scales, list) else [None]
        if not scales or not all(_is_number(s) and 0 < s <= 1 for s in scales):
            bad("scales", "a list of fractions in (0, 1]")
        if not _is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            bad("val_fraction", "0 <= val_fraction < 1")
        clips = str(self.test_clips)
        if clips != "all" and not (clips.isdigit() and int(clips) >= 1):
            bad("test_clips", "'all' or a number >= 1")
        choices = (
            ("normalization", NORMALIZATIONS),
            ("test_crops", EVAL_CROPS),
            ("resize", RESIZES),
            ("mv_border", MV_BORDERS),
        )
        for key, allowed in choices:
            if getattr(self, key) not in allowed:
                bad(key, f"one of {list(allowed)}")
        if self.resize == "squash" and self.test_crops == 3:
            out.append(
                "dataset.test_crops=3 with dataset.resize=squash (the three short-side squares "
                "of a squashed frame are one crop; expected test_crops 1 or 10)"
            )
        if self.teacher_input is not None and self.teacher_input not in TEACHER_INPUTS:
            bad("teacher_input", "rgb or null (no teacher)")
        return out


@dataclass
class OfficialSplitSettings(VideoDatasetSettings):
    """UCF101 and HMDB51: three official train/test splits."""

    split: int = 1  # official split 1, 2 or 3

    def problems(self) -> list[str]:
        """The shared checks, and the split number's."""
        out = super().problems()
        if not _is_int(self.split) or not 1 <= self.split <= 3:
            out.append(f"dataset.split={self.split!r} (expected 1, 2 or 3)")
        return out


@dataclass
class MovingShapesSettings(VideoDatasetSettings):
    """``moving_shapes``: generated on first use; small frames, no flip (it would swap classes)."""

    train_per_class: int = 48  # 384 training videos: 16 per class over-fit (docs/video.md)
    test_per_class: int = 30  # 240 test videos: one is 0.004 of the figure (docs/video.md)
    frames: int = 36  # 3 GOPs per video
    size: int = 64  # rendered frame side
    generator_seed: int = 0
    resolution: list[int] = field(default_factory=lambda: [64, 64])
    crop_size: int = 56
    flip: bool = False  # a mirror would turn "move right" into "move left"
    cache_clips: bool = True

    def problems(self) -> list[str]:
        """The shared checks, and the generator's."""
        out = super().problems()
        for key, low in (("train_per_class", 1), ("test_per_class", 1), ("frames", 1), ("size", 8)):
            if not _is_int(getattr(self, key)) or getattr(self, key) < low:
                out.append(f"dataset.{key}={getattr(self, key)!r} (expected an integer >= {low})")
        return out


@dataclass
class VideoFolderSettings(VideoDatasetSettings):
    """``video_folder``: any ``root/<class>/<video>``, split per class with a fixed seed."""

    test_fraction: float = 0.3
    split_seed: int = 0
    cache_clips: bool = True

    def problems(self) -> list[str]:
        """The shared checks, and the folder split's."""
        out = super().problems()
        if not _is_number(self.test_fraction) or not 0 < self.test_fraction < 1:
            out.append(f"dataset.test_fraction={self.test_fraction!r} (expected in (0, 1))")
        return out


SCHEMAS = {
    "schema_dataset_video": VideoDatasetSettings,
    "schema_dataset_video_split": OfficialSplitSettings,
    "schema_dataset_moving_shapes": MovingShapesSettings,
    "schema_dataset_video_folder": VideoFolderSettings,
}


def settings_from(cls: type[VideoDatasetSettings], **values: Any) -> VideoDatasetSettings:
    """``cls`` built from a data module's arguments (Hydra's ``_target_`` is not one of them)."""
    known = {f.name for f in fields(cls)} - {"_target_"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigValueError(
            f"unknown dataset key(s) {unknown} for {cls.__name__}; expected some of {sorted(known)}"
        )
    return cls(**values)


def register_video_schemas() -> None:
    """Store ``schema_dataset_video`` & co in Hydra's ConfigStore, outside the ``dataset`` group (a
    schema is no option to pick), for the YAML files to extend."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
