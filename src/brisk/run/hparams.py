"""One TensorBoard HParams record per run, so TensorBoard pointed at a sweep directory lists every
job with its settings and final metrics side by side.

Written as ``SummaryWriter.add_hparams`` writes it, with the fixes its defaults need: the record
goes through the run's own open writer, so a run keeps one event file (``add_hparams`` opens a
second writer, and a new ``str(time.time())`` sub-directory by default, which shows up as a
separate run); values that TensorBoard rejects
(lists, None, enums) become strings while numbers stay numbers so the dashboard can still sort
and range-filter by them; booleans become "True"/"False" (torch would store them as 1/0); metric
tags get an ``hparam/`` prefix so they cannot collide with the training curves' scalar tags.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

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
    target: SummaryWriter | str | os.PathLike[str],
    flat_cfg: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    step: int | None = None,
) -> None:
    """Record ``flat_cfg`` and final ``metrics`` through ``target``: the run's open writer (its
    scalars and this record then share one event file), or an event directory.

    Call once, at the end of a run. A metric the run did not produce (``None``, e.g. no test set)
    is written as NaN so the run still appears in the table with every column.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    hparam_values = {k: hparam_value(v) for k, v in flatten_config(flat_cfg).items()}
    metric_dict = {
        (k if k.startswith(METRIC_PREFIX) else METRIC_PREFIX + k): (
            math.nan if v is None else float(v)
        )
        for k, v in metrics.items()
    }
    experiment, session_start, session_end = hparams(hparam_values, metric_dict)

    def write(writer: SummaryWriter) -> None:
        for summary in (experiment, session_start, session_end):
            writer._get_file_writer().add_summary(summary, step)
        for key, value in metric_dict.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    if isinstance(target, SummaryWriter):
        write(target)
    else:
        with SummaryWriter(log_dir=os.fspath(target)) as writer:
            write(writer)
