"""Config schemas, custom resolvers and the location of the YAML tree (``conf/``, as
``brisk.conf``)."""

import os

from omegaconf import OmegaConf

from brisk.config.diagnose import help_config
from brisk.config.schema import PRECISIONS, RunConfig, register_schemas

CONFIG_PATH = "pkg://brisk.conf"
CONFIG_NAME = "config"


def _rank_suffix() -> str:
    """'' on rank 0 (and outside torchrun), '_rank<N>' elsewhere: one log file per rank."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))  # srun without torchrun
    return "" if rank == 0 else f"_rank{rank}"


OmegaConf.register_new_resolver("rank_suffix", _rank_suffix, replace=True)
# `train --help` shows the config without the keys a user never sets (conf/hydra/default.yaml)
OmegaConf.register_new_resolver("brisk_help_config", help_config, replace=True)
register_schemas()

__all__ = ["CONFIG_NAME", "CONFIG_PATH", "PRECISIONS", "RunConfig", "register_schemas"]
