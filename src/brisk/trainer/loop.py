"""The one training loop every task runs through.

It knows nothing about whitening or distillation: it calls the hooks of a
:class:`~brisk.whitening.Whitening` and a :class:`~brisk.teacher.Teacher` at fixed points of each step
(see their modules for the contracts), and the same loop trains a teacher in stage 1 of a video run.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from brisk.data.base import DataModule
from brisk.teacher.base import Teacher
from brisk.trainer.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    config_fingerprint,
    rng_state,
    set_rng_state,
)
from brisk.trainer.data_loading import (
    EvalShard,
    ResumableSampler,
    as_batch_dict,
    make_loader,
    to_device,
)
from brisk.trainer.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    maybe_inject_fault,
)
from brisk.trainer.evaluation import EvalAccumulator
from brisk.trainer.health import divergence_warning, nonfinite_loss_message
from brisk.trainer.logging import RunLogger
from brisk.trainer.optim import build_optimizer
from brisk.whitening.base import Whitening

log = logging.getLogger("brisk")


@dataclass
class FitResult:
    best_val: float | None
    step: int
    epoch: int


class Trainer:
    """Trains ``model`` on ``datamodule`` and writes everything under ``run_dir``."""

    def __init__(
        self,
        trainer_cfg: DictConfig,
        model: nn.Module,
        datamodule: DataModule,
        optimizer_factory: Any,
        scheduler_factory: Any,
        whitening: Whitening,
        teacher: Teacher,
        run_dir: Path,
        device: torch.device,
        dist: DistInfo,
        seed: int,
        config_yaml: str,
        input_key: str = "input",
        monitor: str = "acc1",
    ) -> None:
        self.cfg, self.datamodule, self.run_dir, self.device, self.dist = (
            trainer_cfg,
            datamodule,
            run_dir,
            device,
            dist,
        )
        self.whitening, self.teacher, self.seed, self.input_key, self.monitor = (
            whitening,
            teacher,
            seed,
            input_key,
            monitor,
        )
        self.config_yaml, self.fingerprint = config_yaml, config_fingerprint(config_yaml)
        self.memory_format = _memory_format(model) if trainer_cfg.channels_last else None
        self.model = (
            model.to(device)
            if self.memory_format is None
            else model.to(device, memory_format=self.memory_format)
        )
        # The teacher may add trainable modules to the student (feature-mimicking adapters): attach it
        # before DDP wraps the model and before the optimizer collects the parameters.
        self.teacher.attach(self.model)
        if self.memory_format is not None:
            self.model.to(memory_format=self.memory_format)
        self.ddp_model: nn.Module = self.model
        if dist.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist.local_rank] if device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(optimizer_factory, self.model)
        self.per_rank_batch = self._per_rank_batch(trainer_cfg.batch_size)
        train_set = datamodule.train_dataset()
        self.train_sampler = ResumableSampler(train_set, dist, seed, shuffle=True)
        self.train_loader = make_loader(
            train_set,
            self.train_sampler,
            self.per_rank_batch,
            trainer_cfg.num_workers,
            train=True,
            start_method=trainer_cfg.get("worker_start_method"),
        )
        self.steps_per_epoch = len(self.train_sampler) // self.per_rank_batch
        if trainer_cfg.limit_train_batches:
            self.steps_per_epoch = min(self.steps_per_epoch, trainer_cfg.limit_train_batches)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"trainer.batch_size={trainer_cfg.batch_size} is larger than the training set "
                f"({len(train_set)} samples on {dist.world_size} rank(s)): lower trainer.batch_size"
            )
        self.total_steps = self.steps_per_epoch * trainer_cfg.epochs
        if trainer_cfg.max_steps:
            self.total_steps = min(self.total_steps, trainer_cfg.max_steps)
        self.scheduler = scheduler_factory(
            self.optimizer, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
        )
        precision = str(trainer_cfg.precision)
        self.autocast_dtype = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}[
            precision
        ]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        self.step, self.epoch, self.batch_in_epoch, self.best_val = 0, 0, 0, None
        self.logger: RunLogger | None = None
        self.whitening.attach(self.model)

    def _per_rank_batch(self, global_batch: int) -> int:
        if global_batch % self.dist.world_size:
            raise ValueError(
                f"trainer.batch_size={global_batch} is the global batch and must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        return global_batch // self.dist.world_size

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config_yaml": self.config_yaml,
            "config_fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "whitening": self.whitening.state_dict(),
            "teacher": self.teacher.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_val": self.best_val,
            "monitor": self.monitor,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_fingerprint") != self.fingerprint:
            log.warning(
                "resuming from a checkpoint written with a different config; continuing with the current one"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.whitening.load_state_dict(state["whitening"])
        self.teacher.load_state_dict(state["teacher"])
        self.step, self.epoch, self.batch_in_epoch = (
            state["step"],
            state["epoch"],
            state["batch_in_epoch"],
        )
        self.best_val = state["best_val"]
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        # each rank continues its own random streams (augmentation differs per rank); after a change
        # of world size the ranks reuse the saved streams in turn
        set_rng_state(per_rank[self.dist.rank % len(per_rank)])

    def save(self, name: str) -> None:
        """Rank 0 writes; every rank's RNG state goes in, so an elastic restart continues each stream."""
        rng_per_rank = all_gather_objects(rng_state()) if self.dist.enabled else None
        if self.dist.is_main:
            state = self.state_dict()
            if rng_per_rank is not None:
                state["rng_per_rank"] = rng_per_rank
            atomic_save(state, self.run_dir / "checkpoints" / name)
        barrier()

    # ------------------------------------------------------------------ training
    def open_logger(self) -> RunLogger:
        """Opened once the resume point is known, so rows of a lost partial run are dropped."""
        if self.logger is None:
            self.logger = RunLogger(self.run_dir, self.dist.is_main, resume_from_step=self.step)
        return self.logger

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def fit(self) -> FitResult:
        cfg = self.cfg
        self.open_logger()
        total_steps = self.total_steps
        t_start, steps_this_session = time.perf_counter(), 0
        window = _Window()
        while self.epoch < cfg.epochs and self.step < total_steps:
            self.model.train()
            self._set_epoch(self.epoch)
            for batch in self.train_loader:
                if self.batch_in_epoch >= self.steps_per_epoch or self.step >= total_steps:
                    break
                window.add(*self._train_step(as_batch_dict(batch)))
                self.step += 1
                self.batch_in_epoch += 1
                steps_this_session += 1
                if self.step % cfg.log_every == 0 or self.step == total_steps:
                    self._log_train(window, t_start, steps_this_session, total_steps)
                # A mid-epoch checkpoint never lands on an epoch's last step: the end-of-epoch save
                # follows validation, so a resume can never validate (and log) that epoch twice.
                epoch_ends = self.batch_in_epoch >= self.steps_per_epoch or self.step >= total_steps
                if (
                    cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                    and not epoch_ends
                ):
                    self.save("last.pt")
                maybe_inject_fault(self.step, self.dist.rank)
            self.epoch += 1
            self.batch_in_epoch = 0
            if (
                self.epoch % cfg.val_every == 0
                or self.epoch == cfg.epochs
                or self.step >= total_steps
            ):
                self._validate()
            self.save("last.pt")
        return FitResult(self.best_val, self.step, self.epoch)

    def _set_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.start_index = self.batch_in_epoch * self.per_rank_batch
        dataset = self.train_loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_step(self, batch: dict[str, Any]) -> tuple[float, int, int, dict[str, float]]:
        batch = self.datamodule.on_device_batch(to_device(batch, self.device))
        batch = to_device(batch, self.device, self.memory_format)  # layout of the finished tensors
        inputs, target = batch[self.input_key], batch["target"]
        self.whitening.begin_step(self.step)
        with self._autocast():
            out = self.ddp_model(inputs)
            hard = F.cross_entropy(out.float(), target, label_smoothing=self.cfg.label_smoothing)
            loss, parts = self.teacher.loss(out.float(), batch, hard)
        if not torch.isfinite(loss):
            last = self.run_dir / "checkpoints" / "last.pt"
            raise FloatingPointError(nonfinite_loss_message(loss.item(), self.step, last))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.whitening.precondition(self.step)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        correct = (out.argmax(1) == target).sum().item()
        return loss.item() * len(target), correct, len(target), parts

    def _log_train(
        self, window: _Window, t_start: float, steps_done: int, total_steps: int
    ) -> None:
        stats = torch.tensor([window.loss_sum, window.correct, window.count], dtype=torch.float64)
        all_reduce_sum(stats)
        elapsed = time.perf_counter() - t_start
        per_step = elapsed / max(1, steps_done)
        images_per_s = steps_done * self.cfg.batch_size / max(elapsed, 1e-9)
        row = {
            "loss": stats[0].item() / max(stats[2].item(), 1),
            "acc1": stats[1].item() / max(stats[2].item(), 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": elapsed,
            "images_per_s": images_per_s,
            **{k: v / max(window.steps, 1) for k, v in window.parts.items()},
            **self.whitening.metrics(),
        }
        self.logger.metrics("train", self.step, self.epoch + 1, row)
        warning = divergence_warning(row["loss"], self.step, self.datamodule.num_classes)
        if warning and self.dist.is_main:
            log.warning(warning)
        if self.dist.is_main:
            eta = per_step * (total_steps - self.step)
            log.info(
                "epoch %d/%d step %d/%d  loss %.4f  acc %.3f  lr %.4g  %.0f img/s  ETA %s",
                self.epoch + 1,
                self.cfg.epochs,
                self.step,
                total_steps,
                row["loss"],
                row["acc1"],
                row["lr"],
                images_per_s,
                _hms(eta),
            )
        window.reset()

    # ------------------------------------------------------------------ evaluation
    def _validate(self) -> None:
        metrics = self.evaluate("val")
        value = metrics.get(self.monitor, metrics["acc1"])
        improved = self.best_val is None or value > self.best_val
        if improved:
            self.best_val = value
        self.logger.metrics("val", self.step, self.epoch, metrics)
        if self.dist.is_main:
            log.info(
                "validation after epoch %d: %s%s",
                self.epoch,
                _fmt_metrics(metrics),
                "  (best)" if improved else "",
            )
        if improved:
            self.save("best.pt")

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        dataset = (
            self.datamodule.val_dataset() if split == "val" else self.datamodule.test_dataset()
        )
        # eval_batch_size is global like batch_size; EvalShard needs no even split, so round up
        batch_size = (
            -(-self.cfg.eval_batch_size // self.dist.world_size)
            if self.cfg.eval_batch_size
            else self.per_rank_batch
        )
        loader = make_loader(
            dataset,
            EvalShard(dataset, self.dist),
            batch_size,
            self.cfg.num_workers,
            train=False,
            start_method=self.cfg.get("worker_start_method"),
        )
        self.model.eval()
        acc = EvalAccumulator(self.datamodule.num_classes)
        for i, batch in enumerate(loader):
            if self.cfg.limit_eval_batches and i >= self.cfg.limit_eval_batches:
                break
            batch = self.datamodule.on_device_batch(to_device(as_batch_dict(batch), self.device))
            batch = to_device(batch, self.device, self.memory_format)
            with self._autocast():
                out = self.model(batch[self.input_key]).float()
            acc.add(out, batch["target"], batch.get("video"))
        self.model.train()
        metrics = acc.compute()
        if split == "test":
            self.open_logger().figure("test/confusion_matrix", acc.confusion_figure(), self.step)
        return metrics

    def log_metrics(
        self,
        split: str,
        metrics: dict[str, float],
        step: int | None = None,
        epoch: int | None = None,
    ) -> None:
        self.open_logger().metrics(
            split,
            self.step if step is None else step,
            self.epoch if epoch is None else epoch,
            metrics,
        )


def _memory_format(model: nn.Module) -> torch.memory_format:
    """Channels-last for the model's convolutions: NDHWC for 3D networks, NHWC for 2D ones."""
    has_3d = any(isinstance(m, nn.Conv3d) for m in model.modules())
    return torch.channels_last_3d if has_3d else torch.channels_last


class _Window:
    """Sums over the train steps since the last log row."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.correct, self.count, self.steps, self.parts = 0.0, 0, 0, 0, {}

    def add(self, loss_sum: float, correct: int, count: int, parts: dict[str, float]) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count
        self.steps += 1
        for key, value in parts.items():
            self.parts[key] = self.parts.get(key, 0.0) + float(value)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
