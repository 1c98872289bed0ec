"""Every config value a user can get wrong, checked before any work starts.

The typed schemas (``schema.py``, the whitening settings) catch a misspelt key or a wrong type at
composition time and hold their keys' valid values in their own ``__post_init__``:
:func:`validate_config` builds each typed group of the composed config, which runs those checks,
and raises one :class:`~brisk.errors.ConfigValueError` that names every offending key. Left here
is what no schema can know: the ranges of groups without one (model, data sets; keyed by section,
they apply to whichever of their keys a config has), choices read from other packages, and rules
between keys. :func:`check_data` does the checks that need the loaded data set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from brisk.config.ranges import (
    MOMENTUM,
    NONNEGATIVE_INT,
    OPEN_FRACTION,
    OPTIONAL_POSITIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Range,
    range_problems,
)
from brisk.config.ranges import is_number as _is_number
from brisk.config.ranges import show as _show
from brisk.errors import ConfigValueError, UserError

log = logging.getLogger("brisk")


# "key[]" applies the range to every element of a list value.
RULES: dict[str, dict[str, Range]] = {
    "model": {
        "width": POSITIVE_INT,
        "width_mult": POSITIVE,
        "dropout": MOMENTUM,
        "num_frames": POSITIVE_INT,
        "in_channels": POSITIVE_INT,
    },
    # the image data sets' keys; the video data sets' are checked by their settings dataclass
    # (brisk.video.settings), which _schema_problems builds
    "dataset": {
        "image_size": POSITIVE_INT,
        "resize_size": POSITIVE_INT,
        "val_fraction": Range(0, 1, high_open=True),  # 0: video sets hold out nothing (below)
        "test_fraction": OPEN_FRACTION,
        "val_size": NONNEGATIVE_INT,
        "train_subset": OPTIONAL_POSITIVE_INT,
    },
}
SECTIONS = {name: name for name in RULES}


def validate_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigValueError` naming every key whose value is out of range.

    Runs on the composed config before any data is read or any model is built.
    """
    problems = _schema_problems(cfg)
    for section, rules_name in SECTIONS.items():
        node = OmegaConf.select(cfg, section, default=None)
        if isinstance(node, DictConfig):
            problems += range_problems(section, node, RULES[rules_name])
    problems += _cross_checks(cfg)
    if problems:
        head = "invalid config value" if len(problems) == 1 else "invalid config values"
        raise ConfigValueError(f"{head}: {'; '.join(problems)}")


def _schema_problems(cfg: DictConfig) -> list[str]:
    """Build every group that has a schema dataclass, so its ``__post_init__`` checks run."""
    problems = []
    for name in cfg:
        if name == "whitening":  # with teacher.whitening, by _whitening_settings
            continue
        node = cfg.get(name)
        if not isinstance(node, DictConfig) or not OmegaConf.is_config(node):
            continue
        if not isinstance(OmegaConf.get_type(node), type) or OmegaConf.get_type(node) is dict:
            continue
        try:
            OmegaConf.to_object(node)
        except UserError as err:
            problems.append(str(err))
    return problems


def _choices(cfg: DictConfig) -> Iterator[str]:
    """Keys whose value is one of a few names."""
    model = cfg.get("model")
    if isinstance(model, DictConfig) and model.get("_target_") == "brisk.models.create_model":
        from brisk.models.registry import list_models

        if model.get("name") not in list_models():
            yield f"model.name={_show(model.get('name'))} (expected one of {list_models()})"


def _whitening_settings(cfg: DictConfig) -> Iterator[str]:
    """The whitening keys the settings dataclass itself checks (``momentum`` and the rest of its
    ``__post_init__``), named under the section they were given in."""
    from dataclasses import fields

    from hydra.utils import get_class

    for section in ("whitening", "teacher.whitening"):
        node = OmegaConf.select(cfg, section, default=None)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target:
            continue
        try:
            settings_type = getattr(get_class(target), "settings_type", None)
        except (ImportError, ValueError):
            continue
        if settings_type is None:
            continue
        names = {f.name for f in fields(settings_type)}
        given = OmegaConf.to_container(node, resolve=True)
        assert isinstance(given, dict)
        values = {k: v for k, v in given.items() if k in names}
        try:
            settings_type(**values)
        except UserError as err:
            yield str(err).replace("whitening.", f"{section}.", 1)
        except TypeError:
            continue  # a wrongly typed value: the rules above name it


def _cross_checks(cfg: DictConfig) -> list[str]:
    """Constraints between keys, each named by the key a user would change."""
    problems = list(_choices(cfg))
    problems += list(_whitening_settings(cfg))
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
    return problems


def validate_run(cfg: DictConfig) -> None:
    """Every value a user can get wrong fails here, before any work, naming its key: the config's
    ranges and choices, then how the run is launched (resume, checkpoints). The device is checked
    where it is chosen (``run/setup.py``)."""
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
        raise batch_too_large(batch, n_train, world_size)
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


def batch_too_large(batch: int, n_train: int, world_size: int) -> ConfigValueError:
    """The error of a batch with more samples than the training set (the loop's guard too)."""
    return ConfigValueError(
        f"trainer.batch_size={batch} is larger than the training set ({n_train} samples"
        f"{f' on {world_size} processes' if world_size > 1 else ''}): lower trainer.batch_size"
    )


def _split_keys(cfg: DictConfig) -> str:
    data = cfg.get("dataset")
    keys = [
        f"dataset.{k}={data[k]}"
        for k in ("val_size", "train_subset", "val_fraction", "test_fraction")
        if isinstance(data, DictConfig) and k in data and data[k] is not None
    ]
    return f" (check {', '.join(keys)})" if keys else ""
