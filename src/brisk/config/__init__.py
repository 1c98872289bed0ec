"""Config schemas, custom resolvers and the location of the YAML tree (``conf/``, as
``brisk.conf``)."""

import os
import re

from omegaconf import OmegaConf

from brisk.config.diagnose import help_config
from brisk.config.schema import PRECISIONS, RunConfig, register_schemas

CONFIG_PATH = "pkg://brisk.conf"
CONFIG_NAME = "config"


def _rank_suffix() -> str:
    """'' on rank 0 (and outside torchrun), '_rank<N>' elsewhere: one log file per rank."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))  # srun without torchrun
    return "" if rank == 0 else f"_rank{rank}"


# torchrun sets these for each worker; a leftover TORCHELASTIC_RUN_ID in a shell sets only the first
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "WORLD_SIZE")


def torchrun_id(default: str) -> str:
    """The run directory's name: torchrun's rendezvous id when torchrun started this process (every
    worker, on every node and after every restart, then resolves the same directory), else
    ``default``.

    A ``TORCHELASTIC_RUN_ID`` without torchrun's other variables is ignored: a value left in a
    shell would otherwise put unrelated runs in one directory. The id is made one safe folder name
    (:func:`safe_folder_name`), so it cannot place the run outside ``paths.output_dir``.
    """
    if not all(os.environ.get(key) for key in TORCHRUN_ENV):
        return default
    return safe_folder_name(os.environ["TORCHELASTIC_RUN_ID"])


def safe_folder_name(text: str) -> str:
    """``text`` as one folder name: characters other than letters, digits, ``_``, ``-`` and
    ``.`` become ``_``, as does any run of dots (no ``..``), and no leading dot (no hidden
    folder); at most 100 characters, never empty."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    name = re.sub(r"\.{2,}", "_", name).lstrip(".")
    return name[:100] or "_"


OmegaConf.register_new_resolver("rank_suffix", _rank_suffix, replace=True)
OmegaConf.register_new_resolver("torchrun_id", torchrun_id, replace=True)
# `train --help` shows the config without the keys a user never sets (conf/hydra/default.yaml)
OmegaConf.register_new_resolver("brisk_help_config", help_config, replace=True)
register_schemas()

__all__ = [
    "CONFIG_NAME",
    "CONFIG_PATH",
    "PRECISIONS",
    "RunConfig",
    "register_schemas",
    "safe_folder_name",
    "torchrun_id",
]
