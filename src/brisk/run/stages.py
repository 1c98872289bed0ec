"""The recipe of a run: (1) fit the teacher if it needs fitting, (2) train the student, (3) test it.

Stage 1 exists only for a teacher without weights: :class:`TeacherStage` trains it with the same
:class:`~brisk.trainer.loop.Trainer`, in its own sub-directory, and skips the work once that stage
finished. Stage 2 (:func:`fit_student`) continues or starts the student's training as the
:class:`~brisk.run.resume.ResumePlan` says, then tests the best checkpoint.
:func:`evaluate_checkpoint` is the ``eval_only`` path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from brisk.data.base import DataModule
from brisk.errors import UserError
from brisk.run.checkpoint import load_checkpoint, rng_state, set_rng_state
from brisk.run.context import RunContext
from brisk.run.distributed import barrier
from brisk.run.records import RunRecord, read_status, score_keys, write_status
from brisk.run.resume import RUNTIME_KEYS, ResumePlan, config_diff, continue_point, load_weights
from brisk.teacher.base import NoTeacher, Teacher
from brisk.trainer.ema import PREFIX as EMA_PREFIX
from brisk.trainer.evaluation import format_metrics, monitored
from brisk.trainer.loop import Trainer, ema_part
from brisk.whitening.base import NoWhitening, Whitening

log = logging.getLogger("brisk")


def build_trainer(
    cfg: DictConfig,
    ctx: RunContext,
    model: nn.Module,
    whitening: Whitening,
    teacher: Teacher,
    input_key: str = "input",
    trainer_cfg: DictConfig | None = None,
    optimizer: dict[str, float] | None = None,
    scheduler: dict[str, float] | None = None,
) -> Trainer:
    """A Trainer with the run's optimizer and schedule (fresh instances for every stage).

    ``optimizer`` and ``scheduler`` replace some of the run's values for one stage (the teacher's
    own ``teacher.lr``, ``teacher.weight_decay``, ``teacher.warmup_epochs``).
    """
    return Trainer(
        ctx,
        model,
        trainer_cfg if trainer_cfg is not None else cfg.trainer,
        instantiate(cfg.optimizer, **(optimizer or {})),
        instantiate(cfg.scheduler, **(scheduler or {})),
        whitening,
        teacher,
        input_key,
    )


class TeacherStage:
    """Stage 1: train a teacher network with the runner's own loop, once per run directory.

    Passed to the teacher as ``TeacherContext.fit``; the teacher decides whether to call it (no
    checkpoint, or a checkpoint whose classifier had to be replaced).
    """

    def __init__(self, cfg: DictConfig, ctx: RunContext, teacher: Teacher) -> None:
        self.cfg, self.ctx, self.teacher = cfg, ctx, teacher
        # the fitted teacher's validation and test figures (its status.json), for the run's record
        self.figures: dict[str, Any] = {}

    def __call__(self, net: nn.Module, input_key: str, stage: str) -> nn.Module:
        """Train ``net`` on the batches' ``input_key`` under ``run_dir/stage``; its best weights.

        A stage that started earlier in this run directory is continued (or reused, once done)
        only when its checkpoint was written with this config, as the student's stage is; with
        ``resume_strict=false`` the new values apply.
        """
        # the student's random streams do not depend on whether stage 1 ran in this process: a
        # run that fits its teacher equals one given that teacher's checkpoint, seed for seed
        streams = rng_state()
        try:
            return self._stage(net, input_key, stage)
        finally:
            set_rng_state(streams)

    def _stage(self, net: nn.Module, input_key: str, stage: str) -> nn.Module:
        ctx = self.ctx.for_stage(stage)
        done = ctx.paths.root / "done"
        # the newest readable checkpoint: last.pt, or best.pt when a kill left last.pt unreadable
        found, state = (
            continue_point(ctx.paths) if ctx.paths.last.is_file() else (ctx.paths.last, None)
        )
        new_hparams = self._check_resume(state, found, stage)
        stage_cfg = self.cfg.trainer.copy()
        if self.teacher.epochs:
            stage_cfg.epochs = self.teacher.epochs
        # stage 1 has its own preconditioner (teacher.whitening), independent of the student's
        whitening = self.teacher.whitening or NoWhitening()
        trainer = build_trainer(
            self.cfg,
            ctx,
            net,
            whitening,
            NoTeacher(),
            input_key,
            trainer_cfg=stage_cfg,
            optimizer=self.teacher.stage_optimizer(),
            scheduler=self.teacher.stage_scheduler(),
        )
        if done.is_file():
            log.info("stage '%s' finished earlier in this run: reusing %s", stage, ctx.paths.best)
        else:
            if state is not None:
                self._load(trainer, state, new_hparams, found)
            self._fit(trainer, ctx, stage, input_key)
        whitening.detach()  # the frozen teacher keeps no statistics hooks
        kept = ctx.paths.best if selected_on(ctx.datamodule) == "val" else ctx.paths.last
        try:
            trainer.model.load_state_dict(load_checkpoint(kept)["model"])
        except RuntimeError as err:
            raise UserError(
                f"{kept}: the teacher's weights do not fit this config's teacher network ({err}); "
                "start a new run directory to fit it again"
            ) from err
        status = read_status(ctx.paths.root / "status.json")
        self.figures = {k: v for k, v in status.items() if k.startswith(("best_val_", "test_"))}
        return trainer.model

    def _check_resume(self, state: dict[str, Any] | None, path: Path, stage: str) -> bool:
        """Refuse a stage checkpoint written with another config, naming every differing key,
        unless ``resume_strict=false``; True when the new values are to apply."""
        saved = state.get("config_yaml") if isinstance(state, dict) else None
        if not isinstance(saved, str):
            return False
        changed = config_diff(saved, self.ctx.config_yaml, ignore=RUNTIME_KEYS)
        if not changed:
            return False
        if self.cfg.get("resume_strict", True):
            raise UserError(
                f"{path} (stage '{stage}' of this run) was written with another config; "
                f"differing keys: {'; '.join(changed)}. Rerun with the checkpoint's values, use "
                "another run directory, or apply the new values with resume_strict=false"
            )
        log.warning(
            "resume_strict=false: continuing stage '%s' (%s) with the new values of %s",
            stage,
            path,
            "; ".join(changed),
        )
        return True

    @staticmethod
    def _load(trainer: Trainer, state: dict[str, Any], new_hparams: bool, path: Path) -> None:
        try:
            trainer.load_state_dict(state, new_hparams=new_hparams)
        except (RuntimeError, ValueError) as err:
            raise UserError(
                f"{path}: stage 1 cannot continue from it with this config ({err}); "
                "use another run directory to fit the teacher again"
            ) from err

    def _fit(self, trainer: Trainer, ctx: RunContext, stage: str, input_key: str) -> None:
        log.info("stage '%s': training on '%s'", stage, input_key)
        trainer.fit()
        if selected_on(ctx.datamodule) == "val" and ctx.paths.best.is_file():
            trainer.load_weights(load_checkpoint(ctx.paths.best))
        # the teacher's own figures, as a user of the teacher alone would report them: the kept
        # weights (chosen on validation) tested once
        metrics = trainer.evaluate("val")
        test = trainer.evaluate("test")
        trainer.close()
        log.info("stage '%s': test %s", stage, format_metrics(test))
        warn_if_near_chance(stage, ctx.monitor, trainer.best_val, ctx.datamodule.num_classes)
        if ctx.dist.is_main:
            best_key, test_key = score_keys(ctx.monitor)
            write_status(
                ctx.paths.root,
                status="ok",
                monitor=ctx.monitor,
                **{best_key: trainer.best_val, test_key: monitored(test, ctx.monitor)},
                val=metrics,
                test=test,
            )
            (ctx.paths.root / "done").write_text("finished\n")
        barrier()


def fit_student(trainer: Trainer, plan: ResumePlan, record: RunRecord) -> dict[str, Any]:
    """Stage 2: continue or start training, then test the best checkpoint once."""
    if plan.state is not None:
        try:
            trainer.load_state_dict(plan.state, new_hparams=plan.new_hparams)
        except ValueError as err:
            # the parts (optimizer, whitening) refuse a state that is not theirs, e.g. after
            # resume_strict=false changed the whitening algorithm or the optimizer's groups
            raise UserError(
                f"{plan.checkpoint}: this run cannot continue from it ({err}); "
                f"init_from={plan.checkpoint} starts a new run from its weights"
            ) from err
        plan.state = None  # the trainer holds it now
        log.info(
            "resumed from %s at step %d (epoch %d)", plan.checkpoint, trainer.step, trainer.epoch
        )
        if trainer.finished and record.finished is not None:
            log.info(
                "this run finished earlier (status ok, test %s %s): nothing left to do",
                trainer.monitor,
                record.finished.get(score_keys(trainer.monitor)[1]),
            )
            kept = ("status", "error", "last_attempt")
            return {k: v for k, v in record.finished.items() if k not in kept}
    fit = trainer.fit()
    if selected_on(trainer.datamodule) == "last":
        chosen = "last checkpoint: validation is the test split"
    elif trainer.paths.best.is_file():
        trainer.load_weights(load_checkpoint(trainer.paths.best))
        chosen = "best checkpoint on validation"
    else:
        chosen = "last checkpoint: no validation ran"
    test = trainer.evaluate_all("test")
    trainer.log_metrics("test", test)
    test_acc = monitored(test, trainer.monitor)
    log.info("test (%s): %s", chosen, format_metrics(test))
    log.info("final test %s: %.4f", trainer.monitor, test_acc)
    best_key, test_key = score_keys(trainer.monitor)
    result = {
        "monitor": trainer.monitor,
        best_key: fit.best_val,
        test_key: test_acc,
        "test": test,
        "inference": trainer.inference,
        "steps": fit.step,
        "epochs": fit.epoch,
        **_ema_figures(trainer, test),
    }
    log_final_hparams(trainer, result)
    trainer.close()
    return result


def _ema_figures(trainer: Trainer, test: dict[str, float]) -> dict[str, Any]:
    """status.json's figures of the averaged weights (``trainer.ema``): none when it is off."""
    if trainer.ema is None:
        return {}
    test_ema = monitored(ema_part(test), trainer.monitor)
    log.info("final test %s of the averaged weights (trainer.ema): %.4f", trainer.monitor, test_ema)
    best_key, test_key = score_keys(EMA_PREFIX + trainer.monitor)
    return {best_key: trainer.best_val_ema, test_key: test_ema}


def evaluate_checkpoint(trainer: Trainer, ckpt_path: str) -> dict[str, Any]:
    """``eval_only=true``: val and test metrics of ``ckpt_path``'s weights, no training
    (``validate_run`` has made sure there is a ``ckpt_path``)."""
    saved = load_weights(trainer.model, ckpt_path, key="ckpt_path")  # user errors, one line each
    if saved:  # a brisk checkpoint: with trainer.ema, its averaged weights too
        trainer.load_weights(saved)
    trainer.step, trainer.epoch = int(saved.get("step", 0)), int(saved.get("epoch", 0))
    results = {}
    for split in ("val", "test"):
        results[split] = trainer.evaluate_all(split)
        trainer.log_metrics(split, results[split])
        log.info("%s: %s", split, format_metrics(results[split]))
    test_acc = monitored(results["test"], trainer.monitor)
    log.info("final test %s: %.4f", trainer.monitor, test_acc)
    if trainer.ema is not None:
        trainer.best_val_ema = monitored(ema_part(results["val"]), trainer.monitor)
    best_key, test_key = score_keys(trainer.monitor)
    result = {
        "monitor": trainer.monitor,
        best_key: monitored(results["val"], trainer.monitor),
        test_key: test_acc,
        "test": results["test"],
        "inference": trainer.inference,
        "evaluated": str(ckpt_path),
        **_ema_figures(trainer, results["test"]),
    }
    log_final_hparams(trainer, result)
    trainer.close()
    return result


def log_final_hparams(trainer: Trainer, result: dict[str, Any]) -> None:
    """TensorBoard's HParams record of the run: its identity config with the sweep group the
    loggers put it in (``brisk.group``), and its final figures (the averaged weights' too, with
    ``trainer.ema``); written before the trainer closes its writer so the run keeps one event
    file."""
    config = yaml.safe_load(trainer.config_yaml) or {}
    config["brisk"] = {"group": trainer.ctx.loggers.group}
    keys = (*score_keys(trainer.monitor), *score_keys(EMA_PREFIX + trainer.monitor))
    trainer.open_logger().hparams(config, {k: result[k] for k in keys if k in result})


def selected_on(datamodule: DataModule) -> str:
    """``val`` when validation is held out of the training data (best.pt is reported), ``last``
    when validation is the test split (the last checkpoint is reported): see
    :meth:`DataModule.split_summary`."""
    return str(datamodule.split_summary()["selected_on"])


def warn_if_near_chance(stage: str, metric: str, best: float | None, num_classes: int) -> None:
    """A teacher no better than guessing would only pull the student toward its errors."""
    chance = 1.0 / num_classes
    if best is not None and best < 1.5 * chance:
        log.warning(
            "stage '%s' ended near chance (best %s %.3f, chance %.3f): distilling from it pulls "
            "the student toward its errors. Fit it with teacher.whitening (whitening@teacher."
            "whitening=recursive), for longer (teacher.epochs) or load one (teacher.checkpoint); "
            "docs/video.md",
            stage,
            metric,
            best,
            chance,
        )
