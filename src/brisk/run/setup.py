"""The process-level set-up of a run: its device, its random seeds, its data."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from brisk.data.base import DataModule
from brisk.errors import ConfigValueError, UserError
from brisk.run.distributed import DistInfo, barrier


def select_device(choice: Any) -> torch.device:
    """``trainer.device``: auto picks CUDA when there is one."""
    choice = getattr(choice, "value", choice)
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(
            "trainer.device=cuda but no CUDA device is available (use trainer.device=auto or cpu)"
        )
    return torch.device(choice)


def seed_everything(seed: int, deterministic: bool, threads: int | None) -> None:
    """Seed every generator a step draws from; deterministic kernels when asked for."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def instantiate_checked(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a :class:`~brisk.errors.UserError` raised by the
    constructor (a settings dataclass's checks) through as itself: Hydra wraps every error of a
    target in an ``InstantiationException``, which would print as a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


def setup_data(dataset_cfg: DictConfig, dist: DistInfo) -> DataModule:
    """Rank 0 prepares first (caches, generated data), then the others read what it wrote."""
    datamodule: DataModule = instantiate_checked(dataset_cfg)
    if dist.is_main:
        datamodule.setup()
    barrier()
    if not dist.is_main:
        datamodule.setup()
    return datamodule
