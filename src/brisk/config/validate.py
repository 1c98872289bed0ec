"""Ranges of every numeric config key, checked before any work starts.

The typed schemas (``schema.py``) catch a misspelt key or a wrong type at composition time; they
cannot say that ``trainer.batch_size`` must be positive or ``optimizer.momentum`` below one. Those
values used to fail late with torch's message (or not at all: ``trainer.grad_clip=-1`` flips the
gradient, ``trainer.epochs=0`` reports an untrained model as tested). :func:`validate_config`
checks the composed config against the ranges below and raises one
:class:`~brisk.errors.ConfigValueError` that names every offending key. :func:`check_data` does the
checks that need the loaded data set.

The ranges are keyed by section (``trainer``, ``optimizer``, ...) and apply to whichever of their
keys a config has, so a plugin option (a new optimizer, a new data set) is checked on the keys it
shares.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from brisk.errors import ConfigValueError, UserError

log = logging.getLogger("brisk")


@dataclass(frozen=True)
class Range:
    """A valid interval for one key: ``low``/``high`` bounds (closed unless ``*_open``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False  # null is valid (and means "off" or "default")

    def describe(self) -> str:
        """The valid values in words, for the one-line error naming the key."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f" in {left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            bounds = f" {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            bounds = f" {'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            bounds = ""
        return ("null or " if self.optional else "") + kind + bounds

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` lies in the range; booleans, NaN and infinities never do."""
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.integer and float(value) != int(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = Range(1, integer=True)
OPTIONAL_POSITIVE_INT = Range(1, integer=True, optional=True)
NONNEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NONNEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
MOMENTUM = Range(0, 1, high_open=True)  # [0, 1)

# "key[]" applies the range to every element of a list value.
RULES: dict[str, dict[str, Range]] = {
    "trainer": {
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
    },
    "optimizer": {
        "lr": POSITIVE,
        "momentum": MOMENTUM,
        "dampening": FRACTION,
        "weight_decay": NONNEGATIVE,
        "eps": POSITIVE,
        "betas[]": MOMENTUM,
    },
    "scheduler": {
        "warmup_epochs": NONNEGATIVE,
        "min_lr_ratio": FRACTION,
        "milestones[]": FRACTION,
        "gamma": POSITIVE,
    },
    "whitening": {
        "eps": NONNEGATIVE,
        "eps_abs": NONNEGATIVE,
        "momentum": MOMENTUM,
        "stats_every": POSITIVE_INT,
        "inverse_every": POSITIVE_INT,
        "stats_max_rows": OPTIONAL_POSITIVE_INT,
        "start_step": NONNEGATIVE_INT,
        "max_block": POSITIVE_INT,
        "max_dim": OPTIONAL_POSITIVE_INT,
        "steps": POSITIVE_INT,
        "power_iters": POSITIVE_INT,
        "block": OPTIONAL_POSITIVE_INT,
        "condition_every": NONNEGATIVE_INT,
        "unpaired_weight_decay": Range(0, optional=True),  # null: read from the optimizer
    },
    "model": {
        "width": POSITIVE_INT,
        "width_mult": POSITIVE,
        "dropout": MOMENTUM,
        "num_frames": POSITIVE_INT,
        "in_channels": POSITIVE_INT,
    },
    "dataset": {
        "image_size": POSITIVE_INT,
        "resize_size": POSITIVE_INT,
        "val_fraction": Range(0, 1, high_open=True),  # 0: video sets hold out nothing (below)
        "test_fraction": OPEN_FRACTION,
        "val_size": NONNEGATIVE_INT,
        "train_subset": OPTIONAL_POSITIVE_INT,
        "split": Range(1, 3, integer=True),
        "resolution[]": Range(2, integer=True),
        "crop_size": POSITIVE_INT,
        "gop_size": Range(2, integer=True),
        "scales[]": Range(0, 1, low_open=True),
        "num_workers": NONNEGATIVE_INT,
        "qscale": Range(1, 31, integer=True),
        "val_clips": POSITIVE_INT,
        "train_per_class": POSITIVE_INT,
        "test_per_class": POSITIVE_INT,
        "frames": POSITIVE_INT,
        "size": Range(8, integer=True),
    },
}
# the teacher's own preconditioner (stage 1) has the whitening keys
SECTIONS = {**{name: name for name in RULES}, "teacher.whitening": "whitening"}


def validate_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigValueError` naming every key whose value is out of range.

    Runs on the composed config before any data is read or any model is built.
    """
    problems = [f"{key}={_show(value)} (expected {rule})" for key, value, rule in _violations(cfg)]
    problems += _settings_checks(cfg)
    problems += _cross_checks(cfg)
    if problems:
        head = "invalid config value" if len(problems) == 1 else "invalid config values"
        raise ConfigValueError(f"{head}: {'; '.join(problems)}")


def _violations(cfg: DictConfig) -> Iterator[tuple[str, Any, str]]:
    for section, rules_name in SECTIONS.items():
        node = OmegaConf.select(cfg, section, default=None)
        if not isinstance(node, DictConfig):
            continue
        for spec, rule in RULES[rules_name].items():
            name = spec.removesuffix("[]")
            if name not in node:
                continue
            value = node[name]
            key = f"{section}.{name}"
            if spec.endswith("[]"):
                if not isinstance(value, ListConfig | list):
                    yield key, value, f"a list of {rule.describe()}"
                    continue
                for i, item in enumerate(value):
                    if not rule.accepts(item):
                        yield f"{key}[{i}]", item, rule.describe()
            elif not rule.accepts(value):
                yield key, value, rule.describe()


# groups whose options extend a settings dataclass that checks itself (brisk.teacher.settings)
SETTINGS_GROUPS = ("teacher",)


def _settings_checks(cfg: DictConfig) -> list[str]:
    """Run the ``__post_init__`` checks of the settings dataclasses the composed groups extend."""
    problems = []
    for group in SETTINGS_GROUPS:
        node = OmegaConf.select(cfg, group, default=None)
        if not isinstance(node, DictConfig) or not is_dataclass(OmegaConf.get_type(node)):
            continue
        try:
            OmegaConf.to_object(node)
        except UserError as err:
            problems.append(str(err))
    return problems


def _choices(cfg: DictConfig) -> Iterator[str]:
    """Keys whose value is one of a few names."""
    import multiprocessing

    method = OmegaConf.select(cfg, "trainer.worker_start_method", default=None)
    methods = multiprocessing.get_all_start_methods()
    if method is not None and method not in methods:
        yield f"trainer.worker_start_method={_show(method)} (expected null or one of {methods})"
    norm = OmegaConf.select(cfg, "dataset.normalization", default=None)
    if norm is not None:
        from brisk.video.clips import NORMALIZATIONS

        if norm not in NORMALIZATIONS:
            yield f"dataset.normalization={_show(norm)} (expected one of {list(NORMALIZATIONS)})"
    model = cfg.get("model")
    if isinstance(model, DictConfig) and model.get("_target_") == "brisk.models.create_model":
        from brisk.models.registry import list_models

        if model.get("name") not in list_models():
            yield f"model.name={_show(model.get('name'))} (expected one of {list_models()})"


def _cross_checks(cfg: DictConfig) -> list[str]:
    """Constraints between keys, each named by the key a user would change."""
    problems = list(_choices(cfg))
    opt = cfg.get("optimizer")
    if (
        isinstance(opt, DictConfig)
        and opt.get("nesterov")
        and _is_number(opt.get("momentum"))
        and _is_number(opt.get("dampening"))
        and (opt.momentum <= 0 or opt.dampening != 0)
    ):
        problems.append(
            f"optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0 "
            f"(got {opt.momentum} and {opt.dampening})"
        )
    data = cfg.get("dataset")
    if isinstance(data, DictConfig):
        vf, tf = data.get("val_fraction"), data.get("test_fraction")
        if vf == 0 and "val_clips" not in data:
            # only the video data sets can run without a validation set (they report the last
            # checkpoint then); elsewhere it would leave best.pt chosen on nothing
            problems.append("dataset.val_fraction=0 leaves no validation set (expected (0, 1))")
        if _is_number(vf) and _is_number(tf) and vf + tf >= 1:
            problems.append(
                f"dataset.val_fraction + dataset.test_fraction = {vf + tf:g} leaves no training "
                "data (expected a sum < 1)"
            )
        size, resize = data.get("image_size"), data.get("resize_size")
        if _is_number(size) and _is_number(resize) and resize < size:
            problems.append(
                f"dataset.resize_size={resize} is smaller than dataset.image_size={size} "
                "(the centre crop is taken from the resized image)"
            )
        crop, res = data.get("crop_size"), data.get("resolution")
        numbers = isinstance(res, ListConfig) and len(res) and all(_is_number(r) for r in res)
        if _is_number(crop) and numbers and crop > min(res):
            problems.append(
                f"dataset.crop_size={crop} is larger than the frames of dataset.resolution="
                f"{list(res)}"
            )
    return problems


def validate_run(cfg: DictConfig) -> None:
    """Every value a user can get wrong fails here, before any work, naming its key: the config's
    ranges and choices, then how the run is launched (resume, checkpoints, device)."""
    validate_config(cfg)
    if cfg.resume not in (None, "auto"):
        raise ConfigValueError(
            f"resume must be null or 'auto', got '{cfg.resume}' (use ckpt_path=PATH for a file)"
        )
    if cfg.eval_only and not cfg.ckpt_path:
        raise ConfigValueError(
            "eval_only=true needs ckpt_path=PATH (a checkpoints/best.pt or last.pt of a run)"
        )
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise UserError(f"ckpt_path={path}: no such file")
        if path.stat().st_size == 0:
            raise UserError(f"ckpt_path={path}: empty file (a checkpoint cut off while written?)")
    if str(cfg.trainer.device) == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(
            "trainer.device=cuda but no CUDA device is available (use trainer.device=auto or cpu)"
        )


def check_data(cfg: DictConfig, datamodule: Any, world_size: int = 1) -> None:
    """The checks that need the loaded data set; call right after ``datamodule.setup()``."""
    train = datamodule.train_dataset()
    n_train = len(train)
    batch = int(cfg.trainer.batch_size)
    if n_train == 0:
        raise ConfigValueError(
            f"the training split is empty{_split_keys(cfg)}: nothing to train on"
        )
    if batch > n_train:
        raise ConfigValueError(
            f"trainer.batch_size={batch} is larger than the training set ({n_train} samples"
            f"{f' on {world_size} processes' if world_size > 1 else ''}): lower trainer.batch_size"
        )
    for split in ("val", "test"):
        if len(getattr(datamodule, f"{split}_dataset")()) == 0:
            raise ConfigValueError(
                f"the {split} split is empty{_split_keys(cfg)}: its accuracy would read 0"
            )
    num_classes = int(getattr(datamodule, "num_classes", 0) or 0)
    if num_classes == 1:
        classes = getattr(datamodule, "classes", None)
        log.warning(
            "the data set has a single class%s: every prediction is right, so accuracy is 1.0 and "
            "says nothing; a classifier needs two or more classes (check the folder layout under "
            "dataset.root)",
            f" ({classes[0]!r})" if classes else "",
        )


def _split_keys(cfg: DictConfig) -> str:
    data = cfg.get("dataset")
    keys = [
        f"dataset.{k}={data[k]}"
        for k in ("val_size", "train_subset", "val_fraction", "test_fraction")
        if isinstance(data, DictConfig) and k in data and data[k] is not None
    ]
    return f" (check {', '.join(keys)})" if keys else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    if isinstance(value, ListConfig | DictConfig):
        return str(OmegaConf.to_container(value))
    return repr(value) if isinstance(value, str) else str(value)
