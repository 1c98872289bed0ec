"""``train``: compose a config with Hydra and run it.

``train(cfg)`` is importable and does the work; ``main`` is the thin Hydra wrapper installed as the
``train`` console script (also ``python -m brisk.train``, and under ``torchrun``). A run reads top
to bottom in :func:`train`: the lock on its directory (before anything is written there), where it
continues from (``run/resume.py``), then the stages (``run/stages.py``), with status.json kept by a
``RunRecord``. Exit statuses and sweep stops are ``run/failures.py``'s.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from brisk.config import CONFIG_NAME, CONFIG_PATH
from brisk.config.diagnose import exit_on_composition_error
from brisk.config.validate import check_data, validate_run
from brisk.models.cost import count_params, log_clip_costs
from brisk.run.checkpoint import rng_state, set_rng_state
from brisk.run.context import RunContext
from brisk.run.distributed import broadcast_object, cleanup, init_distributed, launch_rank
from brisk.run.failures import log_failure_to_file, run_command, task_wrapper, user_error_in
from brisk.run.log_file import follow_run
from brisk.run.loggers import RunLoggers, check_extras, open_loggers
from brisk.run.records import RunRecord, score_keys
from brisk.run.resume import ResumePlan, identity_yaml, load_weights, plan_resume
from brisk.run.run_dir import RunLock, RunPaths, lock_run_dir, write_hydra_files
from brisk.run.setup import seed_everything, select_device, setup_data
from brisk.run.signals import RunInterrupted, StopSignals, signal_name
from brisk.run.stages import TeacherStage, build_trainer, evaluate_checkpoint, fit_student
from brisk.teacher.base import Teacher, TeacherContext

log = logging.getLogger("brisk")


def train(cfg: DictConfig, run_dir: Path | str | None = None) -> float:
    """Run the configured experiment; returns the best validation metric (NaN without one).

    Raises :class:`~brisk.run.signals.RunInterrupted` once a stop signal's state is saved and
    recorded, and whatever else ended the run once status.json and the log hold it.
    """
    from_hydra = run_dir is None
    run_dir = Path(HydraConfig.get().runtime.output_dir) if run_dir is None else Path(run_dir)
    main = launch_rank() == 0
    with RunLock(RunPaths(run_dir), enabled=main), ExitStack() as held:
        if from_hydra and main:
            write_hydra_files(run_dir, cfg)
        record = RunRecord(run_dir, enabled=main)
        loggers, outcome = RunLoggers(), "failed"
        try:
            validate_run(cfg)
            check_extras(cfg.get("logger"))
            device = select_device(cfg.trainer.device)
            dist = init_distributed(device, cfg.trainer.backend)
            if device.type == "cuda":
                device = torch.device("cuda", dist.local_rank)
                torch.cuda.set_device(device)
            identity = identity_yaml(cfg)
            plan = ResumePlan(run_dir) if cfg.eval_only else plan_resume(cfg, run_dir, identity)
            plan.run_dir = Path(str(broadcast_object(str(plan.run_dir))))
            paths = RunPaths(plan.run_dir)
            if paths.root.resolve() != run_dir.resolve():  # resume=auto continues another directory
                held.enter_context(lock_run_dir(paths, dist))
                record = RunRecord(paths.root, enabled=dist.is_main)
                if from_hydra:  # its log goes there too; the folder Hydra made goes
                    follow_run(run_dir, paths.root)
            with StopSignals() as stop:
                record.begin(name=cfg.name, slurm_job_id=os.environ.get("SLURM_JOB_ID"))
                seed_everything(
                    cfg.seed + dist.rank, cfg.trainer.deterministic, cfg.trainer.threads
                )
                data = setup_data(cfg.dataset, dist)
                check_data(cfg, data, dist.world_size)
                # after the data checks, so a missing data set leaves no W&B or MLflow run behind;
                # the random streams are kept, so the choice of loggers never changes the training
                streams = rng_state()
                loggers = open_loggers(
                    cfg.get("logger"),
                    paths.root,
                    identity,
                    str(cfg.name),
                    *_sweep_grouping(),
                    enabled=dist.is_main,
                )
                set_rng_state(streams)
                ctx = RunContext(
                    data, paths, device, dist, cfg.seed, identity, cfg.task.monitor, stop, loggers
                )
                result = _run(cfg, ctx, plan, record)
            record.ok(**result)
            loggers.summary(result)
            outcome = "ok"
        except RunInterrupted as stopped:
            outcome = "interrupted"
            record.interrupted(signal_name(stopped.signum), stopped.step, str(stopped))
            log.warning("%s", stopped)
            raise
        except Exception as exc:
            reason = user_error_in(exc) or exc  # the user's error, not the library's wrapping
            record.failed(reason)
            log_failure_to_file(reason)
            raise
        finally:
            loggers.close(outcome)
            cleanup()
    best = result.get(score_keys(str(result.get("monitor", cfg.task.monitor)))[0])
    return float("nan") if best is None else float(best)


def _sweep_grouping() -> tuple[list[str], list[str]]:
    """This job's command-line overrides and the keys its sweep groups without (beside ``seed``),
    so the loggers can name the group the sweep summaries put it in; none outside Hydra."""
    if not HydraConfig.initialized():
        return [], []
    hydra_cfg = cast(DictConfig, HydraConfig.get())  # a DictConfig typed as its schema
    ignore = OmegaConf.select(hydra_cfg, "callbacks.sweep_summary.group_ignore", default=None)
    return list(hydra_cfg.overrides.task), [str(k) for k in (ignore or [])]


def _run(cfg: DictConfig, ctx: RunContext, plan: ResumePlan, record: RunRecord) -> dict[str, Any]:
    """Model, teacher (stage 1 when it needs training), then the student (stage 2)."""
    # identical initial weights on every rank, while each rank keeps its own stream (seed + rank)
    # for augmentation: reseeding the global generator here would give all ranks the same draws
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model: nn.Module = instantiate(cfg.model, num_classes=ctx.datamodule.num_classes)
    if plan.init_from is not None:
        load_weights(model, plan.init_from)
    whitening = instantiate(cfg.whitening)
    teacher: Teacher = instantiate(cfg.teacher)
    log.info("run directory: %s", ctx.paths.root.resolve())
    name = cfg.model.get("name", type(model).__name__)
    log.info("model %s: %.3f M parameters", name, count_params(model) / 1e6)
    stage_one = TeacherStage(cfg, ctx, teacher)
    num_classes = ctx.datamodule.num_classes
    teacher.setup(TeacherContext(ctx.paths.root, ctx.device, num_classes, stage_one, log.info))
    if stage_one.figures:
        record.update(teacher=stage_one.figures)
    trainer = build_trainer(cfg, ctx, model, whitening, teacher)
    if trainer.memory_format is not None and teacher.model is not None:
        teacher.model.to(memory_format=trainer.memory_format)  # the frozen teacher too
    cost = log_clip_costs(ctx.datamodule, model, teacher, log=log.info)
    if cost:
        record.update(cost=cost)
    # what the reported checkpoint is chosen on (video data sets: split sizes and protocol too)
    record.update(**ctx.datamodule.split_summary())
    if cfg.eval_only:
        return evaluate_checkpoint(trainer, cfg.ckpt_path)
    return fit_student(trainer, plan, record)


_task = task_wrapper(train)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float:
    return _task(cfg)


def main() -> None:
    """The ``train`` command: exit status 0, 2 for a user error, 128 + n for a run or parallel
    sweep stopped by signal n, 1 for anything else (``brisk.run.failures``)."""
    exit_on_composition_error(sys.argv[1:])  # brisk's one line and 2, before Hydra's message
    run_command(_hydra_main, sys.argv[1:])


if __name__ == "__main__":
    # Re-import so the task function belongs to the module `brisk.train`, not `__main__`: launchers
    # that pickle it (joblib, submitit) then pickle a reference instead of the whole module.
    from brisk.train import main as _main

    _main()
