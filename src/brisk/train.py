"""``train``: compose a config with Hydra and run it.

``train(cfg)`` is importable and does the work; ``main`` is the thin ``@hydra.main`` wrapper installed as
the ``train`` console script (also ``python -m brisk.train``, and under ``torchrun``).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from brisk.cli import first_failure_was_user_error, note_other_failure, report_user_error
from brisk.config import CONFIG_NAME, CONFIG_PATH
from brisk.config.validate import check_data, validate_config
from brisk.data.base import DataModule
from brisk.errors import USER_ERROR_EXIT, ConfigValueError, UserError
from brisk.teacher.base import NoTeacher, Teacher, TeacherContext
from brisk.trainer.checkpoint import config_fingerprint, load_checkpoint
from brisk.trainer.distributed import DistInfo, barrier, cleanup, init_distributed
from brisk.trainer.hparams import log_hparams
from brisk.trainer.logging import write_status
from brisk.trainer.loop import Trainer
from brisk.whitening.base import NoWhitening

log = logging.getLogger("brisk")

# Keys that say how to launch a run, not what the run is: they do not change its identity.
_LAUNCH_KEYS = ("resume", "ckpt_path", "eval_only", "paths", "hydra")


def train(cfg: DictConfig, run_dir: Path | str | None = None) -> float:
    """Run the configured experiment; returns the best validation metric (NaN when the run failed)."""
    run_dir = Path(run_dir) if run_dir is not None else Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check(cfg)
    device = _device(cfg.trainer.device)
    dist = init_distributed(device, cfg.trainer.backend)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    identity = _identity_yaml(cfg)
    resume_from: Path | None = None
    if not cfg.eval_only:
        run_dir, resume_from = _resume_target(cfg, run_dir, identity)
        run_dir = Path(str(_broadcast(str(run_dir))))
    if dist.is_main:
        write_status(run_dir, status="running", name=cfg.name)
    try:
        result = _run(cfg, run_dir, device, dist, identity, resume_from)
        if dist.is_main:
            write_status(run_dir, status="ok", **result)
            log_hparams(
                run_dir / "tensorboard",
                yaml.safe_load(identity),
                {
                    "best_val_acc1": result.get("best_val_acc1"),
                    "test_acc1": result.get("test_acc1"),
                },
            )
        best = result.get("best_val_acc1")
        return float("nan") if best is None else float(best)
    except Exception as exc:
        if dist.is_main:
            write_status(
                run_dir,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
        raise
    finally:
        cleanup()


def _run(
    cfg: DictConfig,
    run_dir: Path,
    device: torch.device,
    dist: DistInfo,
    identity: str,
    resume_from: Path | None,
) -> dict[str, Any]:
    _seed_everything(cfg.seed + dist.rank, cfg.trainer.deterministic, cfg.trainer.threads)
    datamodule = _setup_data(cfg, dist)
    check_data(cfg, datamodule, dist.world_size)
    # identical initial weights on every rank, while each rank keeps its own stream (seed + rank) for
    # augmentation: reseeding the global generator here would give all ranks the same random draws
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model: nn.Module = instantiate(cfg.model, num_classes=datamodule.num_classes)
    whitening = instantiate(cfg.whitening)
    teacher: Teacher = instantiate(cfg.teacher)
    log.info("run directory: %s", run_dir.resolve())
    log.info(
        "model %s: %.3f M parameters",
        cfg.model.get("name", type(model).__name__),
        _count(model) / 1e6,
    )

    def make_trainer(
        net: nn.Module, stage_dir: Path, wh, te, input_key: str, trainer_cfg: DictConfig
    ) -> Trainer:
        return Trainer(
            trainer_cfg,
            net,
            datamodule,
            instantiate(cfg.optimizer),
            instantiate(cfg.scheduler),
            wh,
            te,
            stage_dir,
            device,
            dist,
            cfg.seed,
            identity,
            input_key=input_key,
            monitor=cfg.task.monitor,
        )

    def fit_stage(net: nn.Module, input_key: str, stage: str) -> nn.Module:
        """Stage training for a teacher: the same loop, its own directory, skipped once finished."""
        stage_dir = run_dir / stage
        done = stage_dir / "done"
        stage_cfg = cfg.trainer.copy()
        if cfg.teacher.get("epochs"):
            stage_cfg.epochs = cfg.teacher.epochs
        # stage 1 has its own preconditioner (teacher.whitening), independent of the student's
        stage_whitening = getattr(teacher, "whitening", None) or NoWhitening()
        trainer = make_trainer(net, stage_dir, stage_whitening, NoTeacher(), input_key, stage_cfg)
        if done.is_file():
            log.info(
                "stage '%s' finished earlier in this run directory: reusing %s",
                stage,
                stage_dir / "checkpoints" / "best.pt",
            )
        else:
            if (stage_dir / "checkpoints" / "last.pt").is_file():
                trainer.load_state_dict(load_checkpoint(stage_dir / "checkpoints" / "last.pt"))
            log.info("stage '%s': training on '%s'", stage, input_key)
            trainer.fit()
            metrics = trainer.evaluate("val")
            trainer.close()
            _warn_if_near_chance(stage, cfg.task.monitor, trainer.best_val, datamodule.num_classes)
            if dist.is_main:
                write_status(stage_dir, status="ok", best_val_acc1=trainer.best_val, val=metrics)
                done.write_text("finished\n")
            barrier()
        stage_whitening.detach()  # the frozen teacher keeps no statistics hooks
        kept = "best.pt" if _selected_on(datamodule) == "val" else "last.pt"
        trainer.model.load_state_dict(load_checkpoint(stage_dir / "checkpoints" / kept)["model"])
        return trainer.model

    teacher.setup(
        TeacherContext(
            run_dir=run_dir,
            device=device,
            num_classes=datamodule.num_classes,
            fit=fit_stage,
            log=log.info,
        )
    )
    trainer = make_trainer(model, run_dir, whitening, teacher, "input", cfg.trainer)
    if trainer.memory_format is not None and getattr(teacher, "model", None) is not None:
        teacher.model.to(
            memory_format=trainer.memory_format
        )  # the frozen teacher runs channels-last too
    cost = _clip_cost(datamodule, model, teacher)
    if cost and dist.is_main:
        write_status(run_dir, cost=cost)
    # video data sets: split sizes, evaluation protocol and what the checkpoint is chosen on
    splits = datamodule.split_summary() if hasattr(datamodule, "split_summary") else {}
    if splits and dist.is_main:
        write_status(run_dir, **splits)

    if cfg.eval_only:
        return _evaluate_only(cfg, trainer, run_dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d (epoch %d)", resume_from, trainer.step, trainer.epoch)
    fit = trainer.fit()
    best_path = run_dir / "checkpoints" / "best.pt"
    if best_path.is_file() and _selected_on(datamodule) == "val":
        trainer.model.load_state_dict(load_checkpoint(best_path)["model"])
    test = trainer.evaluate("test")
    trainer.log_metrics("test", test)
    trainer.close()
    log.info("test (best checkpoint): %s", "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    test_acc = test.get(cfg.task.monitor, test["acc1"])
    log.info("final test %s: %.4f", cfg.task.monitor, test_acc)
    return {
        "best_val_acc1": fit.best_val,
        "test_acc1": test_acc,
        "test": test,
        "steps": fit.step,
        "epochs": fit.epoch,
    }


def _evaluate_only(cfg: DictConfig, trainer: Trainer, run_dir: Path) -> dict[str, Any]:
    if not cfg.ckpt_path:
        raise ValueError(
            "eval_only=true needs ckpt_path=PATH (a checkpoints/best.pt or last.pt of a run)"
        )
    state = load_checkpoint(cfg.ckpt_path)
    trainer.model.load_state_dict(state["model"])
    trainer.step, trainer.epoch = state["step"], state["epoch"]
    results = {}
    for split in ("val", "test"):
        results[split] = trainer.evaluate(split)
        trainer.log_metrics(split, results[split])
        log.info("%s: %s", split, "  ".join(f"{k} {v:.4f}" for k, v in results[split].items()))
    trainer.close()
    monitor = cfg.task.monitor
    log.info("final test %s: %.4f", monitor, results["test"].get(monitor, results["test"]["acc1"]))
    return {
        "best_val_acc1": results["val"].get(monitor, results["val"]["acc1"]),
        "test_acc1": results["test"].get(monitor, results["test"]["acc1"]),
        "test": results["test"],
        "evaluated": str(cfg.ckpt_path),
    }


# ---------------------------------------------------------------------- helpers
def _check(cfg: DictConfig) -> None:
    """Every value a user can get wrong fails here, before any work, naming its key."""
    validate_config(cfg)
    if cfg.resume not in (None, "auto"):
        raise ConfigValueError(
            f"resume must be null or 'auto', got '{cfg.resume}' (use ckpt_path=PATH for a file)"
        )
    if cfg.eval_only and not cfg.ckpt_path:
        raise ConfigValueError(
            "eval_only=true needs ckpt_path=PATH (a checkpoints/best.pt or last.pt of a run)"
        )
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise UserError(f"ckpt_path={path}: no such file")
        if path.stat().st_size == 0:
            raise UserError(f"ckpt_path={path}: empty file (a checkpoint cut off while written?)")
    if str(cfg.trainer.device) == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(
            "trainer.device=cuda but no CUDA device is available (use trainer.device=auto or cpu)"
        )


def _device(choice: Any) -> torch.device:
    choice = getattr(choice, "value", choice)
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "trainer.device=cuda but no CUDA device is available (use trainer.device=auto or cpu)"
        )
    return torch.device(choice)


def _seed_everything(seed: int, deterministic: bool, threads: int | None) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _setup_data(cfg: DictConfig, dist: DistInfo) -> DataModule:
    """Rank 0 prepares first (caches, generated data), then the others read what it wrote."""
    datamodule: DataModule = instantiate(cfg.dataset)
    if dist.is_main:
        datamodule.setup()
    barrier()
    if not dist.is_main:
        datamodule.setup()
    return datamodule


def _identity_yaml(cfg: DictConfig) -> str:
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in _LAUNCH_KEYS:
        container.pop(key, None)
    return yaml.safe_dump(container, sort_keys=True)


def _resume_target(cfg: DictConfig, run_dir: Path, identity: str) -> tuple[Path, Path | None]:
    """Where this run continues from.

    A ``last.pt`` in the run's own directory always wins: that is a torchrun elastic restart. Then an
    explicit ``ckpt_path``. With ``resume=auto`` and no path, the newest run under
    ``paths.output_dir/runs`` with the same config (fingerprint) continues in its own directory.
    """
    own = run_dir / "checkpoints" / "last.pt"
    if own.is_file():
        return run_dir, own
    if cfg.ckpt_path:
        return run_dir, Path(cfg.ckpt_path)
    if cfg.resume == "auto":
        previous = _latest_run_with(
            Path(cfg.paths.output_dir) / "runs", config_fingerprint(identity), exclude=run_dir
        )
        if previous is not None:
            log.info("resume=auto: continuing %s", previous)
            return previous, previous / "checkpoints" / "last.pt"
        log.info(
            "resume=auto: no earlier run of this config under %s; starting fresh",
            Path(cfg.paths.output_dir) / "runs",
        )
    return run_dir, None


def _latest_run_with(runs_root: Path, fingerprint: str, exclude: Path) -> Path | None:
    candidates = []
    for last in runs_root.glob("*/checkpoints/last.pt"):
        folder = last.parent.parent
        if folder.resolve() == exclude.resolve():
            continue
        try:
            if load_checkpoint(last).get("config_fingerprint") == fingerprint:
                candidates.append((last.stat().st_mtime, folder))
        except RuntimeError:
            log.warning("skipping unreadable checkpoint %s", last)
    return max(candidates)[1] if candidates else None


def _broadcast(value: str) -> str:
    from brisk.trainer.distributed import broadcast_object

    return str(broadcast_object(value))


def _selected_on(datamodule: DataModule) -> str:
    """``val`` when validation is held out of the training data (best.pt is reported), ``last`` when
    a video data set has none (``dataset.val_fraction=0``: the last checkpoint is reported)."""
    summary = getattr(datamodule, "split_summary", None)
    return summary()["selected_on"] if summary is not None else "val"


def _clip_cost(datamodule: DataModule, model: nn.Module, teacher: Teacher) -> dict[str, float]:
    """For clip models: parameters and FLOPs per clip and per video of student and teacher, counted by
    torch.utils.flop_counter on the run's own clip shapes and logged at the start of the run."""
    sample = datamodule.train_dataset()[0]
    if not isinstance(sample, dict) or sample["input"].dim() != 4:
        return {}
    from brisk.models.cost import log_run_costs

    test_set = datamodule.test_dataset()
    videos = getattr(test_set, "videos", None)
    clips_per_video = len(test_set) / len(videos) if videos else 1.0
    teacher_model = getattr(teacher, "model", None)
    teacher_clip = tuple(sample[teacher.input_key].shape) if teacher_model is not None else None
    return log_run_costs(
        model,
        tuple(sample["input"].shape),
        clips_per_video,
        teacher_model,
        teacher_clip,
        log=log.info,
    )


def _warn_if_near_chance(stage: str, metric: str, best: float | None, num_classes: int) -> None:
    """A teacher no better than guessing would only pull the student toward its errors."""
    chance = 1.0 / num_classes
    if best is not None and best < 1.5 * chance:
        log.warning(
            "stage '%s' ended near chance (best %s %.3f, chance %.3f): distilling from it pulls the "
            "student toward its errors. Fit it with teacher.whitening (whitening@teacher.whitening="
            "recursive), for longer (teacher.epochs) or load one (teacher.checkpoint); docs/video.md",
            stage,
            metric,
            best,
            chance,
        )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except UserError as err:
        report_user_error(err)  # one line on stderr; exits 2, or fails the job of a sweep
    except Exception:
        note_other_failure()
        raise


def main() -> None:
    """The ``train`` command: exit status 0, 2 for a user error, 1 for anything else."""
    try:
        _hydra_main()
    except SystemExit as exit_:
        if exit_.code == USER_ERROR_EXIT:
            raise
        if exit_.code not in (0, None):
            _explain_failure(sys.argv[1:])
            if first_failure_was_user_error():  # the sweep failure Hydra reported
                raise SystemExit(USER_ERROR_EXIT) from None
        raise
    except Exception:  # HYDRA_FULL_ERROR=1 lets the exception through instead of exiting
        _explain_failure(sys.argv[1:])
        raise


def _explain_failure(overrides: list[str]) -> None:
    """After Hydra's own message: the valid keys for a misspelt one, the pip extra for a missing plugin."""
    from brisk.config.diagnose import explain_unknown_keys
    from brisk.config.extras import missing_extra_messages

    for message in explain_unknown_keys(overrides) + missing_extra_messages(overrides):
        print(f"brisk: {message}", file=sys.stderr)


if __name__ == "__main__":
    # Re-import so the task function belongs to the module `brisk.train`, not `__main__`: launchers that
    # pickle it (joblib, submitit) then pickle a reference instead of the whole module.
    from brisk.train import main as _main

    _main()
