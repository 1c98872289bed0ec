"""One TensorBoard HParams record per run, so TensorBoard pointed at a sweep directory lists every
job with its settings and final metrics side by side.

Written through ``SummaryWriter.add_hparams`` with the fixes its defaults need:
``run_name="."`` keeps the record in the run's own event directory (the default, a new
``str(time.time())`` sub-directory, shows up as a separate run); values that TensorBoard rejects
(lists, None, enums) become strings while numbers stay numbers so the dashboard can still sort
and range-filter by them; booleans become "True"/"False" (torch would store them as 1/0); metric
tags get an ``hparam/`` prefix so they cannot collide with the training curves' scalar tags.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

METRIC_PREFIX = "hparam/"


def flatten_config(config: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``.

    Already-flat dicts pass through unchanged; lists stay whole values (one hparam column each).
    """
    items: Mapping[Any, Any] = (
        OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
        if isinstance(config, DictConfig)
        else config
    )
    flat: dict[str, Any] = {}
    for key, value in items.items():
        name = f"{prefix}{key!s}"
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def hparam_value(value: Any) -> int | float | str:
    """A value TensorBoard's hparams plugin accepts: numbers and text stay, the rest become text."""
    if isinstance(value, enum.Enum):
        return str(value.name)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return str(value)


def log_hparams(
    run_dir: str | os.PathLike[str],
    flat_cfg: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    step: int | None = None,
) -> None:
    """Record ``flat_cfg`` and final ``metrics`` in the TensorBoard event directory ``run_dir``.

    Call once, at the end of a run, with the same directory the run's scalars go to. A metric the
    run did not produce (``None``, e.g. no test set) is written as NaN so the run still appears in
    the table with every column.
    """
    from torch.utils.tensorboard import SummaryWriter

    hparams = {key: hparam_value(value) for key, value in flatten_config(flat_cfg).items()}
    metric_dict = {
        (k if k.startswith(METRIC_PREFIX) else METRIC_PREFIX + k): (
            math.nan if v is None else float(v)
        )
        for k, v in metrics.items()
    }
    with SummaryWriter(log_dir=os.fspath(run_dir)) as writer:
        writer.add_hparams(hparams, metric_dict, run_name=".", global_step=step)
