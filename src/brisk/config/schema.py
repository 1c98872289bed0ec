"""Typed schemas for the config groups whose keys the runner itself reads.

Registered in Hydra's ConfigStore and listed first in each YAML's defaults, so a misspelt key
(``optimizer.lrr=0.1``) or a wrongly typed value (``trainer.epochs=ten``) fails at composition time,
before any work starts. Each schema also holds its keys' valid values (``RANGES`` and
``__post_init__``), which ``validate_config`` checks on the composed config before any work starts;
whitening, teacher and video data set options extend their settings dataclasses the same way.
Plugin groups without a schema (model) are validated by struct mode: their YAML defines the keys,
and ``instantiate`` checks them against the constructor.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore

from brisk.config.ranges import (
    FRACTION,
    MOMENTUM,
    NONNEGATIVE,
    NONNEGATIVE_INT,
    OPTIONAL_POSITIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Range,
    check_ranges,
    show,
)
from brisk.config.teacher import register_teacher_schemas
from brisk.config.whitening import register_whitening_schemas


class Device(StrEnum):
    """``trainer.device``: ``auto`` picks CUDA when available, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Backend(StrEnum):
    """``trainer.backend``: ``auto`` follows the device (gloo on CPU, nccl on CUDA)."""

    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class AuxOptimizer(StrEnum):
    """The optimizer Muon leaves the input layer, classifier, norms and biases to."""

    adamw = "adamw"
    sgd = "sgd"


#: ``trainer.precision``: float32, bf16 autocast, or float16 autocast with loss scaling.
PRECISIONS = ("32", "bf16", "16-mixed")


@dataclass
class EmaConfig:
    """``trainer.ema``: an exponential moving average of the weights, evaluated beside them."""

    enabled: bool = False
    decay: float = 0.999  # per optimizer step, once warmed up
    # the decay at step t is decay * (1 - exp(-t / warmup_steps)); 0: decay from the first step
    warmup_steps: int = 200

    RANGES: ClassVar[dict[str, Range]] = {"decay": MOMENTUM, "warmup_steps": NONNEGATIVE_INT}

    def __post_init__(self) -> None:
        check_ranges("trainer.ema", self, self.RANGES)


@dataclass
class TrainerConfig:
    """The ``trainer`` group: length, batching, cadence and numerics of the loop, for every task."""

    epochs: int = 10
    max_steps: int | None = None  # optional cap on optimizer steps; ends training early
    batch_size: int = 128  # global batch: split across ranks under torchrun
    eval_batch_size: int | None = None  # defaults to batch_size
    num_workers: int = 0
    # fork | forkserver | spawn for the loader workers; None: the platform default (fork on Linux)
    worker_start_method: str | None = None
    log_every: int = 50  # optimizer steps between train rows in metrics.csv
    val_every: int = 1  # epochs between validations
    checkpoint_every: int | None = (
        None  # optimizer steps between mid-epoch checkpoints (None: epoch ends)
    )
    deterministic: bool = False
    device: Device = Device.auto
    backend: Backend = Backend.auto
    precision: str = "32"  # 32 | bf16 | 16-mixed
    channels_last: bool = (
        False  # NHWC / NDHWC memory layout: 1.6-3.5x faster 3D convolutions on CPU
    )
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    limit_train_batches: int | None = None  # batches per epoch (debugging)
    limit_eval_batches: int | None = None
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    ema: EmaConfig = field(default_factory=EmaConfig)  # val/ema_* and test/ema_* beside the raw

    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": POSITIVE_INT,
        "max_steps": OPTIONAL_POSITIVE_INT,
        "batch_size": POSITIVE_INT,
        "eval_batch_size": OPTIONAL_POSITIVE_INT,
        "num_workers": NONNEGATIVE_INT,
        "log_every": POSITIVE_INT,
        "val_every": POSITIVE_INT,
        "checkpoint_every": OPTIONAL_POSITIVE_INT,
        "grad_clip": Range(0, low_open=True, optional=True),
        "label_smoothing": MOMENTUM,
        "limit_train_batches": OPTIONAL_POSITIVE_INT,
        "limit_eval_batches": OPTIONAL_POSITIVE_INT,
        "threads": OPTIONAL_POSITIVE_INT,
    }

    def __post_init__(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        check_ranges(
            "trainer",
            self,
            self.RANGES,
            _choice("trainer.precision", str(self.precision), PRECISIONS),
            _choice("trainer.worker_start_method", self.worker_start_method, [None, *methods]),
        )


@dataclass
class PathsConfig:
    """The ``paths`` group: data is read under ``data_dir``; runs land in ``output_dir``; caches
    built from the data (the video data sets' re-encoded videos and clip arrays) under
    ``cache_dir``."""

    root_dir: str = "."
    data_dir: str = "./data"
    cache_dir: str = "${paths.data_dir}/cache"  # large and rebuildable: move it to scratch disk
    output_dir: str = "./outputs"  # where runs and sweeps land


@dataclass
class SGDConfig:
    """``optimizer=sgd``: partial, so the model's parameter groups are passed in at setup."""

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = True
    weight_decay: float = 5e-4

    RANGES: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE,
        "momentum": MOMENTUM,
        "dampening": FRACTION,
        "weight_decay": NONNEGATIVE,
    }

    def __post_init__(self) -> None:
        nesterov_needs = (
            f"optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0 "
            f"(got {self.momentum} and {self.dampening})"
        )
        bad_nesterov = self.nesterov and (self.momentum <= 0 or self.dampening != 0)
        check_ranges("optimizer", self, self.RANGES, nesterov_needs if bad_nesterov else "")


@dataclass
class AdamWConfig:
    """``optimizer=adamw``: partial, so the model's parameter groups are passed in at setup."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05

    RANGES: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE,
        "betas[]": MOMENTUM,
        "eps": POSITIVE,
        "weight_decay": NONNEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges("optimizer", self, self.RANGES)


@dataclass
class MuonConfig:
    """Muon on hidden weights plus an auxiliary optimizer (brisk/trainer/optimizers/muon.py)."""

    _target_: str = "brisk.trainer.optimizers.muon.muon_with_aux"
    _partial_: bool = True
    lr: float = 0.02  # Muon's learning rate on the hidden weights
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations
    weight_decay: float = 0.01  # decoupled, hidden weights
    adjust_lr_fn: str | None = None  # torch.optim.Muon's; null: "original"
    aux: AuxOptimizer = AuxOptimizer.adamw  # input layer, classifier, norms and biases
    aux_lr: float | None = None  # null: 3e-4 for adamw, 0.1 for sgd
    aux_betas: tuple[float, float] = (0.9, 0.95)
    aux_eps: float = 1e-10
    aux_momentum: float = 0.9  # sgd only
    aux_weight_decay: float = 0.01  # input and output weights; norms and biases never

    RANGES: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE,
        "momentum": MOMENTUM,
        "ns_steps": POSITIVE_INT,
        "weight_decay": NONNEGATIVE,
        "aux_lr": Range(0, low_open=True, optional=True),
        "aux_betas[]": MOMENTUM,
        "aux_eps": POSITIVE,
        "aux_momentum": MOMENTUM,
        "aux_weight_decay": NONNEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges("optimizer", self, self.RANGES)


@dataclass
class CosineConfig:
    """``scheduler=cosine``: linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""

    _target_: str = "brisk.trainer.schedulers.warmup_cosine"
    _partial_: bool = True
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0

    RANGES: ClassVar[dict[str, Range]] = {"warmup_epochs": NONNEGATIVE, "min_lr_ratio": FRACTION}

    def __post_init__(self) -> None:
        check_ranges("scheduler", self, self.RANGES)


@dataclass
class MultiStepConfig:
    """``scheduler=multistep``: linear warm-up, then ``gamma`` steps at fractions of training."""

    _target_: str = "brisk.trainer.schedulers.warmup_multistep"
    _partial_: bool = True
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    gamma: float = 0.1

    RANGES: ClassVar[dict[str, Range]] = {
        "warmup_epochs": NONNEGATIVE,
        "milestones[]": FRACTION,
        "gamma": POSITIVE,
    }

    def __post_init__(self) -> None:
        check_ranges("scheduler", self, self.RANGES)


@dataclass
class TaskConfig:
    """The ``task`` group: a name for summaries, the validation metric that picks ``best.pt``."""

    name: str = "digits"
    monitor: str = "acc1"  # validation metric that picks best.pt (video tasks: video_acc1)


@dataclass
class RunConfig:
    """The root: every run has these keys; groups are filled by the defaults list."""

    task: TaskConfig = field(default_factory=TaskConfig)
    dataset: Any = None
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    whitening: Any = None
    teacher: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = None  # {name: settings} of every selected logger (conf/logger)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 42
    resume: str | None = None  # null | auto
    ckpt_path: str | None = None
    resume_strict: bool = True  # false: a resume applies this config's differing values
    init_from: str | None = None  # weights only (brisk checkpoint or state dict); fresh optimizer
    eval_only: bool = False
    name: str = "run"  # a label for the run, shown in logs and summaries


def _choice(key: str, value: Any, choices: Any) -> str:
    """The problem of a key whose value is not one of a few names ('' when it is)."""
    if value in choices:
        return ""
    names = [c for c in choices if c is not None]
    return f"{key}={show(value)} (expected {'null or ' if None in choices else ''}one of {names})"


def register_schemas() -> None:
    """Put the structured schemas in Hydra's ConfigStore, so YAML that misspells a key or gives a
    wrong type fails at compose time instead of deep inside a run.

    They are stored outside the config groups (``schema_<group>_<option>``, pulled in by each
    option's YAML as ``/schema_...@_here_``), so ``train --help`` and Hydra's list of options show
    only what a user can pick. ``trainer`` and ``paths`` are typed by :class:`RunConfig` itself.
    """
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    cs.store(name="schema_optimizer_sgd", node=SGDConfig)
    cs.store(name="schema_optimizer_adamw", node=AdamWConfig)
    cs.store(name="schema_optimizer_muon", node=MuonConfig)
    cs.store(name="schema_scheduler_cosine", node=CosineConfig)
    cs.store(name="schema_scheduler_multistep", node=MultiStepConfig)
    register_whitening_schemas(cs)
    register_teacher_schemas(cs)
