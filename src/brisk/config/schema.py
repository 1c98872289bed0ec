"""Typed schemas for the config groups whose keys the runner itself reads.

Registered in Hydra's ConfigStore and listed first in each YAML's defaults, so a misspelt key
(``optimizer.lrr=0.1``) or a wrongly typed value (``trainer.epochs=ten``) fails at composition time,
before any work starts. Whitening and teacher options extend their settings dataclasses the same
way; other plugin groups (dataset, model) are validated by struct mode: their YAML defines the keys,
and ``instantiate`` checks them against the constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore

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


class Precision(StrEnum):
    """Training precision: ``32``, ``bf16`` (autocast) or ``16-mixed`` (autocast + loss scaling).

    The member names equal the values although "32" and "16-mixed" are not identifiers: OmegaConf
    looks a string up by name and writes names into the run's identity YAML, which must keep reading
    "32" (the fingerprint of every earlier run depends on it).
    """

    locals()["32"] = "32"
    bf16 = "bf16"
    locals()["16-mixed"] = "16-mixed"

    @classmethod
    def _missing_(cls, value: object) -> Any:
        # ``trainer.precision=32`` reaches us as the int 32 from Hydra's override parser
        if isinstance(value, int) and not isinstance(value, bool):
            return cls._value2member_map_.get(str(value))
        return None


PRECISIONS = tuple(p.value for p in Precision)


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
    precision: Precision = Precision["32"]  # 32 | bf16 | 16-mixed
    channels_last: bool = (
        False  # NHWC / NDHWC memory layout: 1.6-3.5x faster 3D convolutions on CPU
    )
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    limit_train_batches: int | None = None  # batches per epoch (debugging)
    limit_eval_batches: int | None = None
    threads: int | None = None  # torch intra-op threads; None keeps torch's default


@dataclass
class PathsConfig:
    """The ``paths`` group: data is read under ``data_dir``; runs land in ``output_dir``."""

    root_dir: str = "."
    data_dir: str = "./data"
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


@dataclass
class AdamWConfig:
    """``optimizer=adamw``: partial, so the model's parameter groups are passed in at setup."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05


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


@dataclass
class CosineConfig:
    """``scheduler=cosine``: linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""

    _target_: str = "brisk.trainer.schedulers.warmup_cosine"
    _partial_: bool = True
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0


@dataclass
class MultiStepConfig:
    """``scheduler=multistep``: linear warm-up, then ``gamma`` steps at fractions of training."""

    _target_: str = "brisk.trainer.schedulers.warmup_multistep"
    _partial_: bool = True
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    gamma: float = 0.1


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
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 42
    resume: str | None = None  # null | auto
    ckpt_path: str | None = None
    resume_strict: bool = True  # false: a resume applies this config's differing values
    init_from: str | None = None  # weights only (brisk checkpoint or state dict); fresh optimizer
    eval_only: bool = False
    name: str = "run"  # a label for the run, shown in logs and summaries


def register_schemas() -> None:
    """Put the structured schemas in Hydra's ConfigStore, so YAML that misspells a key or gives a
    wrong type fails at compose time instead of deep inside a run.
    """
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)
    cs.store(group="optimizer", name="base_sgd", node=SGDConfig)
    cs.store(group="optimizer", name="base_adamw", node=AdamWConfig)
    cs.store(group="optimizer", name="base_muon", node=MuonConfig)
    cs.store(group="scheduler", name="base_cosine", node=CosineConfig)
    cs.store(group="scheduler", name="base_multistep", node=MultiStepConfig)
    register_whitening_schemas(cs)
    register_teacher_schemas(cs)
