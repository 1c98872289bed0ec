"""The ``logger`` group: where a run's numbers go besides metrics.csv (always written).

``tensorboard`` (the default) writes event files in the run directory; ``csv`` writes nothing more;
``wandb`` and ``mlflow`` send the run to Weights & Biases and MLflow (optional pip extras). Several
at once: ``logger=[tensorboard,wandb]`` or ``logger=many``. Each external logger gets:

- the run's identity config (the resolved config without launch keys), once;
- every row of metrics.csv as it is written, under TensorBoard's tags (``train/loss``,
  ``val/acc1``, ``val/ema_acc1``) at the row's optimizer step;
- the final and best figures of status.json at the end (``best_val_acc1``, ``test_acc1``, ...);
- the sweep's grouping key (the overrides minus ``seed`` and the sweep's ``group_ignore``, as the
  sweep summaries group jobs, and minus the keys that do not change what a run computes:
  ``resume``, ``logger``, ``paths``, ``trainer.threads``..., so a resumed run stays in its
  group): W&B's ``group``, MLflow's ``brisk.group`` tag.

The W&B and MLflow run ids are kept in ``<run>/loggers.json``: a resumed run (``resume=auto``, an
elastic restart) continues the same W&B run and the same MLflow run. Only rank 0 logs. A stage of
the run (a teacher fitted in stage 1) writes its own metrics.csv and TensorBoard files only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from brisk.config.extras import MLFLOW, WANDB, Extra, missing_modules
from brisk.errors import UserError
from brisk.run.checkpoint import atomic_write
from brisk.run.hparams import flatten_config

log = logging.getLogger("brisk")

KNOWN = ("tensorboard", "csv", "wandb", "mlflow")
EXTRAS: dict[str, Extra] = {"wandb": WANDB, "mlflow": MLFLOW}
IDS_FILE = "loggers.json"


def selected(logger_cfg: Any) -> list[str]:
    """The names of the loggers the ``logger`` group selected (none for ``logger=[]``)."""
    if logger_cfg is None:
        return []
    names = list(logger_cfg.keys())
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise UserError(
            f"logger: unknown logger {', '.join(map(str, unknown))} (expected some of "
            f"{', '.join(KNOWN)}, e.g. logger=[tensorboard,wandb])"
        )
    return [str(n) for n in names]


def check_extras(logger_cfg: Any) -> None:
    """Fail before any work when a selected logger's pip extra is not installed."""
    for name in selected(logger_cfg):
        extra = EXTRAS.get(name)
        if extra is not None and missing_modules(extra):
            raise UserError(
                f"logger={name} needs the '{extra.name}' extra: pip install -e \".[{extra.name}]\" "
                f'in a checkout, or pip install "brisk[{extra.name}]"'
            )


def tb_tag(split: str, key: str) -> str:
    """The tag a metrics.csv column gets in TensorBoard and the external loggers."""
    return key if "/" in key else f"{split}/{key}"


def scalars(split: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric columns of one metrics.csv row under their tags (wall-clock seconds left out:
    the CSV keeps them)."""
    return {
        tb_tag(split, k): float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "seconds"
    }


class ExternalLogger(Protocol):
    """What the runner asks of W&B and MLflow alike."""

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars at an optimizer step."""

    def summary(self, figures: dict[str, Any]) -> None:
        """The run's final and best figures."""

    def close(self, status: str) -> None:
        """End the run: ``ok``, ``failed`` or ``interrupted``."""


@dataclass
class RunIdentity:
    """What every logger is told about the run besides its numbers."""

    run_dir: Path
    name: str
    config: dict[str, Any]
    overrides: list[str]
    group: str


@dataclass
class RunLoggers:
    """The loggers of one run: whether TensorBoard is on, and the open external ones (rank 0)."""

    tensorboard: bool = True
    external: list[ExternalLogger] = field(default_factory=list)
    group: str = ""  # the sweep's grouping key of this run (TensorBoard's HParams get it too)

    def for_stage(self) -> RunLoggers:
        """A stage of the run keeps TensorBoard in its own folder and tells no external logger."""
        return replace(self, external=[])

    def log(self, split: str, step: int, values: Mapping[str, Any]) -> None:
        """One metrics.csv row to every external logger."""
        tagged = scalars(split, values)
        for logger in self.external:
            logger.log(tagged, step)

    def summary(self, result: Mapping[str, Any]) -> None:
        """status.json's figures (numbers, and the test metrics under ``test/``) to each logger."""
        figures = _figures(result)
        for logger in self.external:
            logger.summary(figures)

    def close(self, status: str) -> None:
        """End every external run; one that fails to close is logged, never raised."""
        for logger in self.external:
            try:
                logger.close(status)
            except Exception as exc:  # the run's own outcome matters more than a logger's
                log.warning("could not close %s: %s", type(logger).__name__, exc)
        self.external = []


def _figures(result: Mapping[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, Mapping) and key in ("test", "val"):
            figures.update(scalars(key, value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            figures[key] = value
    return figures


def open_loggers(
    logger_cfg: Any,
    run_dir: Path,
    identity_yaml_text: str,
    name: str,
    overrides: Iterable[str],
    group_ignore: Iterable[str],
    enabled: bool,
) -> RunLoggers:
    """Open the selected loggers for ``run_dir``, continuing the runs of ``loggers.json`` if any.

    ``enabled`` is false on ranks other than 0: they get TensorBoard's flag and nothing else.
    """
    from brisk.run.resume import LAUNCH_KEYS, RUNTIME_KEYS
    from brisk.sweep.jobs import group_key, override_key

    names = selected(logger_cfg)
    overrides = list(overrides)
    what = [o for o in overrides if override_key(o).split(".")[0].split("/")[0] not in LAUNCH_KEYS]
    key = group_key(what, {"seed", *RUNTIME_KEYS, *group_ignore})
    group = " ".join(key) or "(no overrides)"
    loggers = RunLoggers(tensorboard="tensorboard" in names, group=group)
    if not enabled:
        return loggers
    import yaml

    identity = RunIdentity(
        run_dir=run_dir,
        name=name,
        config=yaml.safe_load(identity_yaml_text) or {},
        overrides=overrides,
        group=loggers.group,
    )
    ids_path = run_dir / IDS_FILE
    ids = _read_ids(ids_path)
    settings = (
        OmegaConf.to_container(logger_cfg, resolve=True)
        if isinstance(logger_cfg, DictConfig)
        else dict(logger_cfg or {})
    )
    assert isinstance(settings, dict)
    try:
        if "wandb" in names:
            wandb_logger = WandbLogger(settings["wandb"] or {}, identity, ids.get("wandb"))
            loggers.external.append(wandb_logger)
            ids["wandb"] = wandb_logger.run_id
        if "mlflow" in names:
            mlflow_logger = MlflowLogger(settings["mlflow"] or {}, identity, ids.get("mlflow"))
            loggers.external.append(mlflow_logger)
            ids["mlflow"] = mlflow_logger.run_id
    except BaseException:
        loggers.close("failed")
        raise
    if loggers.external:
        text = json.dumps(ids, indent=2) + "\n"
        atomic_write(ids_path, lambda f: f.write(text.encode()))
    return loggers


def _read_ids(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s unreadable (%s): the loggers start new runs", path, exc)
        return {}
    return {str(k): str(v) for k, v in ids.items()} if isinstance(ids, dict) else {}


class WandbLogger:
    """A Weights & Biases run; continued (``resume="allow"``) when ``run_id`` is given."""

    def __init__(self, settings: dict[str, Any], run: RunIdentity, run_id: str | None) -> None:
        import wandb

        directory = Path(settings.get("dir") or os.environ.get("WANDB_DIR") or run.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=settings.get("project") or "brisk",
            entity=settings.get("entity"),
            mode=settings.get("mode"),
            dir=str(directory),
            name=run.run_dir.name,
            group=run.group,
            job_type=run.name,
            tags=list(settings.get("tags") or []),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off"),  # the run's train.log has the console
        )
        self.run.config.update(
            {**run.config, "brisk": {"overrides": run.overrides, "group": run.group}},
            allow_val_change=True,
        )
        self.run_id = str(self.run.id)
        if run_id:
            log.info("logger=wandb: continuing W&B run %s", run_id)

    def log(self, values: dict[str, float], step: int) -> None:
        """W&B rows are keyed by step: a validation row joins the train row of its step."""
        self.run.log(values, step=step)

    def summary(self, figures: dict[str, Any]) -> None:
        """The figures go in the run summary, which W&B's tables and reports show."""
        self.run.summary.update(figures)

    def close(self, status: str) -> None:
        """Finish the run (a non-zero exit code marks a failed or interrupted one)."""
        self.run.finish(exit_code=0 if status == "ok" else 1)


class MlflowLogger:
    """An MLflow run through ``MlflowClient`` (no global active run); continued by its id."""

    STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, settings: dict[str, Any], run: RunIdentity, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=settings.get("tracking_uri"))
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            known = self.client.get_run(run_id).data.params
            log.info("logger=mlflow: continuing MLflow run %s", run_id)
        else:
            experiment_name = settings.get("experiment_name") or "brisk"
            experiment = self.client.get_experiment_by_name(experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(experiment_name)
            )
            created = self.client.create_run(
                experiment_id,
                run_name=run.run_dir.name,
                tags={
                    "brisk.group": run.group,
                    "brisk.overrides": " ".join(run.overrides),
                    "brisk.run_dir": str(run.run_dir.resolve()),
                    "brisk.name": run.name,
                },
            )
            self.run_id = created.info.run_id
            known = {}
        self._log_params(flatten_config(run.config), known)

    def _log_params(self, flat: dict[str, Any], known: dict[str, str]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flat.items() if k not in known]
        changed = [k for k, v in flat.items() if k in known and known[k] != str(v)]
        if changed:  # an MLflow param cannot change (resume_strict=false): noted as tags
            for key in changed:
                self.client.set_tag(self.run_id, f"brisk.resumed_with.{key}", str(flat[key]))
        for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        """One batch per row, at the row's optimizer step."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def summary(self, figures: dict[str, Any]) -> None:
        """The figures as metrics at their own keys (``test_acc1``, ``best_val_acc1``)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(figures.get("steps", 0) or 0)
        metrics = [Metric(_mlflow_key(k), float(v), now, step) for k, v in figures.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=self.STATUS.get(status, "FAILED"))


def _mlflow_key(key: str) -> str:
    # MLflow keys allow letters, digits, _ - . space : / only
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)
