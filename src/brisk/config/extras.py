"""Name the missing pip extra before Hydra fails on a launcher or sweeper plugin that is absent.

brisk ships ``hydra/launcher=slurm``, ``hydra/launcher=parallel`` and ``+hparams_search=optuna``;
each builds on a Hydra plugin that is an optional extra. Without the plugin Hydra only says
``Could not load 'hydra/launcher/submitit_slurm'``, which does not tell a user what to install.
:func:`missing_extra_messages` turns the command-line overrides into the exact install command,
which ``train`` prints after Hydra's own error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Extra:
    """An optional dependency group: the modules it makes importable, and its pip package."""

    name: str  # the [project.optional-dependencies] key in pyproject.toml
    modules: tuple[str, ...]  # what must be importable
    pip_package: str


SLURM = Extra(
    "slurm", ("hydra_plugins.hydra_submitit_launcher", "submitit"), "hydra-submitit-launcher"
)
JOBLIB = Extra("joblib", ("hydra_plugins.hydra_joblib_launcher",), "hydra-joblib-launcher")
OPTUNA = Extra("optuna", ("hydra_plugins.hydra_optuna_sweeper", "optuna"), "hydra-optuna-sweeper")
# the loggers of the ``logger`` group (brisk.run.loggers checks them before a run starts)
WANDB = Extra("wandb", ("wandb",), "wandb")
MLFLOW = Extra("mlflow", ("mlflow",), "mlflow-skinny")

# (config group, option) -> the extra it needs; brisk's own configs and the plugins' names
PLUGIN_OPTIONS: dict[tuple[str, str], Extra] = {
    ("hydra/launcher", "slurm"): SLURM,
    ("hydra/launcher", "submitit_slurm"): SLURM,
    ("hydra/launcher", "submitit_local"): SLURM,
    ("hydra/launcher", "parallel"): JOBLIB,
    ("hydra/launcher", "joblib"): JOBLIB,
    ("hydra/sweeper", "optuna"): OPTUNA,
    ("hparams_search", "optuna"): OPTUNA,
}


def missing_modules(extra: Extra) -> list[str]:
    """The modules of ``extra`` that cannot be imported; found without importing them (a plugin's
    import may be slow or fail for reasons of its own).
    """
    missing = []
    for module in extra.modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def missing_extra_messages(overrides: Sequence[str]) -> list[str]:
    """One install instruction per override that selects a plugin which is not installed.

    Arguments that are not group selections (``-m``, ``optimizer.lr=0.1``) are ignored, so the
    whole ``sys.argv[1:]`` of ``train`` can be passed.
    """
    messages = []
    for override in overrides:
        if "=" not in override or override.startswith("-"):
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~").removeprefix("/")
        extra = PLUGIN_OPTIONS.get((key, value.strip()))
        missing = missing_modules(extra) if extra is not None else []
        if extra is not None and missing:
            messages.append(
                f"'{override}' needs the '{extra.name}' extra ({extra.pip_package}), but "
                f"{', '.join(missing)} cannot be imported. Install it with "
                f'pip install -e ".[{extra.name}]" in a checkout, or '
                f'pip install "brisk[{extra.name}]" for an installed brisk.'
            )
    return messages
