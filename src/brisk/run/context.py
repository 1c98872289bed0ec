"""What every trainer of one run shares, in one object instead of a dozen arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from brisk.data.base import DataModule
from brisk.run.distributed import DistInfo
from brisk.run.loggers import RunLoggers
from brisk.run.run_dir import RunPaths
from brisk.run.signals import NeverStop, StopSignals


@dataclass
class RunContext:
    """The data, where files go, the device and process group, and the run's identity.

    ``config_yaml`` is the run's identity config (launch keys removed): checkpoints carry it so a
    resume can tell whether it continues the same experiment. ``stop`` is read between steps
    (preemption).
    """

    datamodule: DataModule
    paths: RunPaths
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: DistInfo = field(default_factory=DistInfo)
    seed: int = 0
    config_yaml: str = ""
    monitor: str = "acc1"
    stop: StopSignals = field(default_factory=NeverStop)
    loggers: RunLoggers = field(default_factory=RunLoggers)  # the ``logger`` group, opened

    def for_stage(self, name: str) -> RunContext:
        """The same run seen by one of its stages, which writes into its own sub-directory."""
        return dataclasses.replace(
            self, paths=self.paths.stage(name), loggers=self.loggers.for_stage()
        )
