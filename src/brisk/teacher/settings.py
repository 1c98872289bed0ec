"""The teacher's settings, declared once: the schema of ``conf/teacher/*.yaml`` and its checks.

Python code (``RGBI3DTeacher()``) and the ``teacher=`` config group read the same dataclasses:
``brisk.config`` registers them as the schemas that ``conf/teacher/*.yaml`` extend, so a default
changed here changes both, a misspelt key fails at composition, and a value out of range fails in
``__post_init__`` (run by ``brisk.config.validate`` before any work, and by every constructor) with
one line naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from brisk.errors import UserError

__all__ = [
    "FINETUNE",
    "GATES",
    "INPUT_TRANSFORMS",
    "RGBI3DSettings",
    "RGBMFNetSettings",
    "TeacherSettings",
]

GATES = ("none", "correct", "confident")
INPUT_TRANSFORMS = ("rgb", "diff")
FINETUNE = ("auto", True, False)


@dataclass
class TeacherSettings:
    """The knobs of a distillation teacher (``teacher.<key>``).

    - ``checkpoint``: weights to load (a pytorch-i3d file, an MFNet-3D file, or a brisk run's
      ``checkpoints/best.pt``). Without one, the runner trains the teacher first (stage 1).
    - ``alpha``: weight of the KL term; ``temperature``: the softening T; ``ce_weight``: weight of
      the student's hard-label loss (0.5 with alpha 0.5 is Hinton's weighting).
    - ``gate``: which samples the KL term uses. ``none``: all. ``correct``: those whose label the
      teacher predicts (its argmax), provided its predictions of that class have been right at
      least ``gate_precision`` of the time over the training batches so far. ``confident``: as
      ``correct``, and with probability of the label at least ``gate_confidence``. The KL is
      still averaged over the whole batch, so its weight shrinks with the share of samples the
      teacher may be followed on.
    - ``beta``: weight of feature mimicking (0 disables it); ``layers``: ``{student_module:
      teacher_module}`` pairs to mimic, e.g. ``{conv5: Mixed_5c}``.
    - ``num_frames``, ``width_mult``, ``dropout``: the teacher network's shape (width_mult < 1 for
      CPU runs). ``keep_time``: I3D without temporal strides; the public weights load either way.
    - ``input_key``: the batch field the teacher reads. ``finetune``: with a checkpoint, also train
      the teacher in stage 1: ``auto`` when its classifier was replaced, ``true`` always, ``false``
      never. ``init_student``: start the student from the teacher's weights wherever names and
      shapes agree (``teacher=rgb_mfnet`` at the student's width matches every tensor).
    - Stage 1 (the teacher fitted here): ``epochs`` (None: ``trainer.epochs``), its own ``lr``,
      ``weight_decay`` and ``warmup_epochs`` (None: the run's ``optimizer`` and ``scheduler``),
      ``bn_momentum`` (None: the network's own), and ``input_transform``: ``rgb`` feeds the frames
      as they are (what public weights expect), ``diff`` the first frame and ``diff_scale`` times
      the differences of consecutive frames, which a network fitted from scratch needs to see
      motion of a few pixels per frame over textures (docs/video.md).
    """

    checkpoint: str | None = None
    alpha: float = 1.0
    temperature: float = 4.0
    ce_weight: float = 1.0
    gate: str = "correct"
    gate_confidence: float = 0.5
    gate_precision: float = 0.5
    beta: float = 0.0
    # {student_layer: teacher_layer} or None; Any, as OmegaConf cannot merge a mapping into a
    # typed null (teacher.layers={conv5: conv5} on the command line)
    layers: Any = None
    num_frames: int = 12
    width_mult: float = 1.0
    dropout: float = 0.0
    keep_time: bool = False
    input_key: str = "rgb"
    finetune: Any = "auto"  # auto | true | false (a union OmegaConf cannot type)
    init_student: bool = False
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    bn_momentum: float | None = None
    input_transform: str = "rgb"
    diff_scale: float = 4.0

    def __post_init__(self) -> None:
        _positive("temperature", self.temperature)
        for key in ("alpha", "beta", "ce_weight"):
            _at_least(key, getattr(self, key), 0.0)
        if self.beta > 0 and not self.layers:
            raise UserError(
                "teacher.beta > 0 needs teacher.layers, e.g. {conv5: conv5}: the layers to mimic"
            )
        if self.finetune not in FINETUNE or not isinstance(self.finetune, str | bool):
            raise UserError(f"teacher.finetune must be auto, true or false, got {self.finetune!r}")
        _choice("gate", self.gate, GATES)
        _choice("input_transform", self.input_transform, INPUT_TRANSFORMS)
        for key in ("gate_precision", "gate_confidence"):
            _fraction(key, getattr(self, key), closed=True)
        _fraction("dropout", self.dropout, closed=False)
        _positive_int("num_frames", self.num_frames)
        _positive("width_mult", self.width_mult)
        _positive("diff_scale", self.diff_scale)
        if self.epochs is not None:
            _positive_int("epochs", self.epochs)
        if self.lr is not None:
            _positive("lr", self.lr)
        if self.weight_decay is not None:
            _at_least("weight_decay", self.weight_decay, 0.0)
        if self.warmup_epochs is not None:
            _at_least("warmup_epochs", self.warmup_epochs, 0.0)
        if self.bn_momentum is not None:
            _fraction("bn_momentum", self.bn_momentum, closed=True)
        if self.layers is not None and not isinstance(self.layers, Mapping):
            raise UserError(
                f"teacher.layers must be null or a mapping {{student_layer: teacher_layer}}, "
                f"got {self.layers!r}"
            )
        # Hydra hands a mapping over as a DictConfig: keep a plain dict
        self.layers = {str(k): str(v) for k, v in self.layers.items()} if self.layers else None


@dataclass
class RGBI3DSettings(TeacherSettings):
    """``teacher=rgb_i3d``: a CPU-sized I3D fitted from scratch in stage 1 on frame differences.

    Measured on moving_shapes (docs/video.md): the published settings (dropout 0.5, BN momentum
    0.01) with the student's lr 0.05 and no warm-up learn nothing in a short run; these reach
    validation 0.9 or more. A public file (``checkpoint``) needs ``width_mult=1.0
    input_transform=rgb``.
    """

    width_mult: float = 0.25
    # logits and features: the best of the three variants measured on moving_shapes (docs/video.md)
    beta: float = 0.1
    layers: Any = field(default_factory=lambda: {"conv5": "Mixed_5c"})
    epochs: int | None = 24
    lr: float | None = 0.01
    weight_decay: float | None = 1e-4
    warmup_epochs: float | None = 1.0
    bn_momentum: float | None = 0.1
    input_transform: str = "diff"


@dataclass
class RGBMFNetSettings(TeacherSettings):
    """``teacher=rgb_mfnet``: the student's MFNet-3D on RGB; stage 1 follows the run's optimizer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_time:
            raise UserError("teacher.keep_time applies to teacher=rgb_i3d only")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"teacher.{key} must be a finite number, got {value!r}")
    return float(value)


def _positive(key: str, value: Any) -> None:
    if _number(key, value) <= 0:
        raise UserError(f"teacher.{key} must be > 0, got {value}")


def _at_least(key: str, value: Any, low: float) -> None:
    if _number(key, value) < low:
        raise UserError(f"teacher.{key} must be >= {low:g}, got {value}")


def _positive_int(key: str, value: Any) -> None:
    if _number(key, value) < 1 or float(value) != int(value):
        raise UserError(f"teacher.{key} must be a positive integer, got {value}")


def _fraction(key: str, value: Any, closed: bool) -> None:
    v = _number(key, value)
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise UserError(f"teacher.{key} must be in [0, 1{']' if closed else ')'}, got {value}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"teacher.{key} must be one of {list(choices)}, got {value!r}")
