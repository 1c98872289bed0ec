"""The one training loop every task runs through.

It knows nothing about whitening or distillation: it calls the hooks of a
:class:`~brisk.whitening.Whitening` and a :class:`~brisk.teacher.Teacher` at fixed points of each
step (see their modules for the contracts), and the same loop trains a teacher in stage 1 of a video
run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sized
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from brisk.config.validate import batch_too_large
from brisk.progress import EpochProgress, TaskProgress
from brisk.run.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    config_fingerprint,
    rng_state,
    set_rng_state,
    share_file,
)
from brisk.run.context import RunContext
from brisk.run.distributed import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    maybe_inject_fault,
)
from brisk.run.records import RunLogger
from brisk.run.resume import apply_new_hparams
from brisk.run.signals import RunInterrupted
from brisk.runtime import format_duration
from brisk.teacher.base import NoTeacher, Teacher
from brisk.trainer.data_loading import (
    EvalShard,
    ResumableSampler,
    as_batch_dict,
    make_loader,
    to_device,
)
from brisk.trainer.ema import PREFIX as EMA_PREFIX
from brisk.trainer.ema import ModelEMA
from brisk.trainer.estimate import DurationEstimate
from brisk.trainer.evaluation import EvalAccumulator, format_metrics, monitored
from brisk.trainer.health import (
    NonFiniteLossError,
    divergence_warning,
    nonfinite_loss_message,
)
from brisk.trainer.optimizers.build import build_optimizer
from brisk.whitening.base import NoWhitening, Whitening

log = logging.getLogger("brisk")


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` ends with: the best validation metric (None without validation),
    and where training stopped.
    """

    best_val: float | None
    step: int
    epoch: int


class Trainer:
    """Trains ``model`` on ``ctx.datamodule`` and writes everything under ``ctx.paths``.

    ``trainer_cfg`` is the ``trainer`` config group (a stage may pass its own copy); the optimizer
    and scheduler factories are the partially instantiated ``optimizer`` and ``scheduler`` groups.
    """

    def __init__(
        self,
        ctx: RunContext,
        model: nn.Module,
        trainer_cfg: DictConfig,
        optimizer_factory: Any,
        scheduler_factory: Any,
        whitening: Whitening | None = None,
        teacher: Teacher | None = None,
        input_key: str = "input",
    ) -> None:
        self.ctx = ctx
        self.cfg = trainer_cfg
        self.datamodule = ctx.datamodule
        self.paths = ctx.paths
        self.device = ctx.device
        self.dist = ctx.dist
        self.seed = ctx.seed
        self.monitor = ctx.monitor
        self.stop = ctx.stop
        self.whitening = whitening if whitening is not None else NoWhitening()
        self.teacher = teacher if teacher is not None else NoTeacher()
        self.input_key = input_key
        self.config_yaml = ctx.config_yaml
        self.fingerprint = config_fingerprint(ctx.config_yaml)
        self.memory_format = _memory_format(model) if trainer_cfg.channels_last else None
        self.model = model.to(self.device)
        # The teacher may add trainable modules to the student (feature-mimicking adapters): attach
        # it before DDP wraps the model and before the optimizer collects the parameters.
        self.teacher.attach(self.model)
        if self.memory_format is not None:
            self.model.to(memory_format=self.memory_format)
        ema_cfg = trainer_cfg.get("ema")
        self.ema = (
            ModelEMA(self.model, ema_cfg.decay, ema_cfg.warmup_steps)
            if ema_cfg is not None and ema_cfg.enabled
            else None
        )
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None,
            )
        self.optimizer = build_optimizer(optimizer_factory, self.model)
        self.per_rank_batch = self._per_rank_batch(trainer_cfg.batch_size)
        train_set = self.datamodule.train_dataset()
        self.train_sampler = ResumableSampler(train_set, self.dist, self.seed, shuffle=True)
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
            n_train = len(cast(Sized, train_set))
            raise batch_too_large(trainer_cfg.batch_size, n_train, self.dist.world_size)
        self.total_steps = self.steps_per_epoch * trainer_cfg.epochs
        if trainer_cfg.max_steps:
            self.total_steps = min(self.total_steps, trainer_cfg.max_steps)
        self.scheduler = scheduler_factory(
            self.optimizer, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
        )
        precision = str(getattr(trainer_cfg.precision, "value", trainer_cfg.precision))
        self.autocast_dtype = _AUTOCAST[precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "16-mixed")
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_val: float | None = None
        self.best_val_ema: float | None = None  # the averaged weights' best (trainer.ema)
        # the speed of the last test pass (_InferenceClock.summary); status.json's "inference"
        self.inference: dict[str, Any] | None = None
        self.last_saved_step: int | None = None
        self.logger: RunLogger | None = None
        self.progress_stream: IO[str] | None = sys.stderr
        self._window: _Window | None = None
        self._session = _Session()
        self._estimate: DurationEstimate | None = None
        self.whitening.attach(self.model)

    @property
    def run_dir(self) -> Path:
        """The folder of this run (or stage): its checkpoints, metrics and status."""
        return self.paths.root

    @property
    def finished(self) -> bool:
        """Every epoch (or ``max_steps``) done: fit() has nothing left to do."""
        return self.epoch >= self.cfg.epochs or self.step >= self.total_steps

    def _per_rank_batch(self, global_batch: int) -> int:
        if global_batch % self.dist.world_size:
            raise ValueError(
                f"trainer.batch_size={global_batch} is the global batch and must be divisible by "
                f"the {self.dist.world_size} processes"
            )
        return global_batch // self.dist.world_size

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds to continue this run exactly: weights, optimizer, schedule,
        loss scaler, whitening and teacher state, progress, random streams and the identity config.
        """
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
            "best_val_ema": self.best_val_ema,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "monitor": self.monitor,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], new_hparams: bool = False) -> None:
        """Continue the run ``state`` was saved from.

        ``new_hparams`` (``resume_strict=false``): keep this config's optimizer hyper-parameters and
        this config's schedule (for its own length) from the restored step, instead of the saved
        ones.
        """
        fresh_groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.whitening.load_state_dict(state["whitening"])
        self.teacher.load_state_dict(state["teacher"])
        self.step = state["step"]
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.best_val = state["best_val"]
        self.best_val_ema = state.get("best_val_ema")
        self.last_saved_step = self.step
        if new_hparams:
            apply_new_hparams(self.optimizer, self.scheduler, fresh_groups, self.total_steps)
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        # each rank continues its own random streams (augmentation differs per rank); after a change
        # of world size the ranks reuse the saved streams in turn
        set_rng_state(per_rank[self.dist.rank % len(per_rank)])

    def load_weights(self, state: dict[str, Any]) -> None:
        """The model's weights from a checkpoint, and the averaged weights when ``trainer.ema`` is
        on (a checkpoint without them starts the average at the loaded weights)."""
        self.model.load_state_dict(state["model"])
        if self.ema is None:
            return
        if state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        else:
            log.warning("the checkpoint has no averaged weights: trainer.ema starts from its own")
            self.ema.restart_from(self.model)

    def save(self, name: str, also_best: bool = False) -> None:
        """Rank 0 writes; every rank's RNG state goes in, so an elastic restart continues each
        stream.

        ``also_best``: ``best.pt`` holds this same step, so it becomes a second name of the file
        just written (a hard link, or a copy where links fail) rather than a second write.
        Never saves weights that a non-finite loss has touched: the pending check runs first.
        """
        self._check_finite()
        rng_per_rank = all_gather_objects(rng_state()) if self.dist.enabled else None
        if self.dist.is_main:
            state = self.state_dict()
            if rng_per_rank is not None:
                state["rng_per_rank"] = rng_per_rank
            path = self.paths.checkpoint(name)
            atomic_save(state, path)
            if also_best:
                share_file(path, self.paths.best)
        if name == "last.pt":
            self.last_saved_step = self.step
        barrier()

    # ------------------------------------------------------------------ training
    def open_logger(self) -> RunLogger:
        """Opened once the resume point is known, so rows of a lost partial run are dropped."""
        if self.logger is None:
            self.logger = RunLogger(
                self.run_dir,
                self.dist.is_main,
                resume_from_step=self.step,
                loggers=self.ctx.loggers,
            )
        return self.logger

    def close(self) -> None:
        """Close the logger; safe to call twice."""
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def fit(self) -> FitResult:
        """Train until the last epoch (or ``max_steps``), validating and checkpointing as
        configured.

        A stop signal checkpoints and raises :class:`RunInterrupted` at the next step boundary.
        """
        self.open_logger()
        self._window = _Window(self.device)
        self._session = _Session()
        self._estimate = DurationEstimate(
            self.total_steps, self.steps_per_epoch, self.cfg.epochs, self.step, self._sync
        )
        progress = EpochProgress(self.progress_stream, enabled=self.dist.is_main)
        if not self.finished and self.stop.agreed():  # the signal came while the run was set up
            self._interrupted()
        try:
            with progress.logging_above():
                while not self.finished:
                    self._fit_epoch(progress)
        finally:
            progress.close()
        return FitResult(self.best_val, self.step, self.epoch)

    def _fit_epoch(self, progress: EpochProgress) -> None:
        cfg = self.cfg
        self.model.train()
        self._set_epoch(self.epoch)
        progress.start(
            self.epoch + 1, cfg.epochs, self.steps_per_epoch, self.batch_in_epoch, cfg.batch_size
        )
        for batch in self.train_loader:
            if self.batch_in_epoch >= self.steps_per_epoch or self.step >= self.total_steps:
                break
            self._train_step(as_batch_dict(batch))
            self.step += 1
            self.batch_in_epoch += 1
            self._session.steps += 1
            estimate = self._estimate.step_done() if self._estimate is not None else None
            if estimate and self.dist.is_main:
                log.info("%s", estimate)
            progress.advance(cfg.batch_size)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                progress.show_loss(self._log_train())
            # A mid-epoch checkpoint never lands on an epoch's last step: the end-of-epoch save
            # follows validation, so a resume can never validate (and log) that epoch twice.
            epoch_ends = self.batch_in_epoch >= self.steps_per_epoch or self.finished
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not epoch_ends:
                self.save("last.pt")
            maybe_inject_fault(self.step, self.dist.rank)
            # an epoch's last step goes on to validation and the epoch-end save, then stops
            if not epoch_ends and self.stop.agreed():
                self._interrupted()
        progress.close()
        self._check_finite()
        self.epoch += 1
        self.batch_in_epoch = 0
        improved = False
        if self.epoch % cfg.val_every == 0 or self.finished:
            improved = self._validate()
        self.save("last.pt", also_best=improved)
        if not self.finished and self.stop.agreed():
            self._interrupted()

    def _sync(self) -> None:
        """Wait for the device's queued work (CUDA runs steps asynchronously): for timing."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _interrupted(self) -> None:
        assert self.stop.signum is not None
        if self.last_saved_step != self.step:
            self.save("last.pt")
        log.warning("saved %s at step %d (epoch %d)", self.paths.last, self.step, self.epoch + 1)
        raise RunInterrupted(self.stop.signum, self.step, str(self.paths.last))

    def _set_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.start_index = self.batch_in_epoch * self.per_rank_batch
        dataset = self.train_loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_step(self, batch: dict[str, Any]) -> None:
        """One optimizer step. Nothing here waits for the device: the loss and accuracy are summed
        on it, and read (and checked for finiteness) at log steps, epoch ends and saves only."""
        batch = self.datamodule.on_device_batch(to_device(batch, self.device))
        batch = to_device(batch, self.device, self.memory_format)  # layout of the finished tensors
        inputs, target = batch[self.input_key], batch["target"]
        self.whitening.begin_step(self.step)
        with self._autocast():
            out = self.ddp_model(inputs)
            hard = F.cross_entropy(out.float(), target, label_smoothing=self.cfg.label_smoothing)
            loss, parts = self.teacher.loss(out.float(), batch, hard)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.whitening.precondition(self.step)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step + 1)
        correct = (out.detach().argmax(1) == target).sum()
        assert self._window is not None, "fit() opens the window"
        self._window.add(self.step + 1, loss.detach(), correct, len(target), parts)

    def _check_finite(self) -> None:
        """Raise if any step since the last check had a non-finite loss, naming the first one."""
        if self._window is None:
            return
        bad_step, bad_value = self._window.first_non_finite()
        if bad_step is None:
            return
        # checkpoints are never written after a non-finite step: last.pt, if any, is a good one
        raise NonFiniteLossError(nonfinite_loss_message(bad_value, bad_step, self.paths.last))

    def _log_train(self) -> float:
        """Write a train row and a log line; returns the window's mean loss (for the bar)."""
        self._check_finite()
        window, session = self._window, self._session
        assert window is not None
        stats = torch.stack([window.loss_sum, window.correct.double(), window.count.double()]).cpu()
        all_reduce_sum(stats)
        elapsed = time.perf_counter() - session.start
        images_per_s = session.steps * self.cfg.batch_size / max(elapsed, 1e-9)
        count = max(stats[2].item(), 1)
        row = {
            "loss": stats[0].item() / count,
            "acc1": stats[1].item() / count,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": elapsed,
            "images_per_s": images_per_s,
            **{k: float(v) / max(window.steps, 1) for k, v in window.parts.items()},
            **self.whitening.metrics(),
        }
        assert self.logger is not None
        self.logger.metrics("train", self.step, self.epoch + 1, row)
        warning = divergence_warning(row["loss"], self.step, self.datamodule.num_classes)
        if warning and self.dist.is_main:
            log.warning(warning)
        if self.dist.is_main:
            eta = elapsed / max(1, session.steps) * (self.total_steps - self.step)
            log.info(
                "epoch %d/%d step %d/%d  loss %.4f  acc %.3f  lr %.4g  %.0f img/s  ETA %s",
                self.epoch + 1,
                self.cfg.epochs,
                self.step,
                self.total_steps,
                row["loss"],
                row["acc1"],
                row["lr"],
                images_per_s,
                format_duration(eta),
            )
        window.reset()
        return row["loss"]

    # ------------------------------------------------------------------ evaluation
    def _validate(self) -> bool:
        """Validate and log; whether the monitored metric improved (the caller saves best.pt)."""
        metrics = self.evaluate_all("val")
        value = monitored(metrics, self.monitor)
        # best.pt is chosen on the raw weights' validation metric; the average's best is reported
        improved = self.best_val is None or value > self.best_val
        if improved:
            self.best_val = value
        if self.ema is not None:
            ema_value = monitored(ema_part(metrics), self.monitor)
            if self.best_val_ema is None or ema_value > self.best_val_ema:
                self.best_val_ema = ema_value
        self.open_logger().metrics("val", self.step, self.epoch, metrics)
        if self.dist.is_main:
            log.info(
                "validation after epoch %d: %s%s",
                self.epoch,
                format_metrics(metrics),
                "  (best)" if improved else "",
            )
        return improved

    def evaluate_all(self, split: str) -> dict[str, float]:
        """:meth:`evaluate` of the model, and with ``trainer.ema`` the averaged weights' metrics
        beside them under ``ema_`` names (``ema_acc1``)."""
        metrics = self.evaluate(split)
        if self.ema is not None:
            averaged = self.evaluate(split, self.ema.module)
            metrics.update({EMA_PREFIX + k: v for k, v in averaged.items()})
        return metrics

    @torch.no_grad()
    def evaluate(self, split: str, model: nn.Module | None = None) -> dict[str, float]:
        """Metrics on the ``val`` or ``test`` split, each sample counted once across ranks.

        ``model``: another network to evaluate (the averaged weights) instead of the model.
        """
        network = self.model if model is None else model
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
        network.eval()
        acc = EvalAccumulator(self.datamodule.num_classes)
        clock = _InferenceClock(self.device)
        limit = self.cfg.limit_eval_batches
        total = min(len(loader), limit) if limit else len(loader)
        bar = TaskProgress(total, split, "batch", self.progress_stream, self.dist.is_main)
        for i, batch in enumerate(bar.iterate(loader)):
            if limit and i >= limit:
                break
            batch = self.datamodule.on_device_batch(to_device(as_batch_dict(batch), self.device))
            batch = to_device(batch, self.device, self.memory_format)
            with clock.forward(), self._autocast():
                out = network(batch[self.input_key]).float()
            clock.count(len(out), batch.get("video"))
            acc.add(out, batch["target"], batch.get("video"))
        bar.close()
        self.model.train()
        metrics = acc.compute()
        if split == "test" and model is None:
            self.open_logger().figure("test/confusion_matrix", acc.confusion_figure(), self.step)
            self.inference = clock.summary(
                batch_size, str(getattr(self.cfg.precision, "value", self.cfg.precision))
            )
            if self.dist.is_main:
                acc.write_class_results(
                    self.paths.root, split, getattr(self.datamodule, "classes", None) or None
                )
        return metrics

    def log_metrics(
        self,
        split: str,
        metrics: dict[str, float],
        step: int | None = None,
        epoch: int | None = None,
    ) -> None:
        """Log ``metrics`` at the current step and epoch unless given (a stage logs its own)."""
        self.open_logger().metrics(
            split,
            self.step if step is None else step,
            self.epoch if epoch is None else epoch,
            metrics,
        )


def ema_part(metrics: dict[str, float]) -> dict[str, float]:
    """The averaged weights' metrics of :meth:`Trainer.evaluate_all`, under their plain names."""
    return {k.removeprefix(EMA_PREFIX): v for k, v in metrics.items() if k.startswith(EMA_PREFIX)}


def _memory_format(model: nn.Module) -> torch.memory_format:
    """Channels-last for the model's convolutions: NDHWC for 3D networks, NHWC for 2D ones."""
    has_3d = any(isinstance(m, nn.Conv3d) for m in model.modules())
    return torch.channels_last_3d if has_3d else torch.channels_last


class _InferenceClock:
    """Times the model's forward passes of one evaluation, apart from loading and decoding.

    The device is synchronised around each forward, so an accelerator's time is counted in full.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.model_seconds = 0.0
        self.clips = 0
        self.videos: set[int] = set()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Wrap one forward pass."""
        self._sync()
        begin = time.perf_counter()
        yield
        self._sync()
        self.model_seconds += time.perf_counter() - begin

    def count(self, clips: int, video: Tensor | None) -> None:
        """Add one batch's clips (and the videos they belong to)."""
        self.clips += clips
        if video is not None:
            self.videos.update(video.tolist())

    def summary(self, batch_size: int, precision: str) -> dict[str, Any]:
        """clips/s and ms per video of the model alone, and end to end (loading included)."""
        total = time.perf_counter() - self.start
        videos = len(self.videos) or self.clips  # a sample is its own "video" on image sets
        return {
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "batch_size": batch_size,
            "precision": precision,
            "clips": self.clips,
            "videos": videos,
            "clips_per_video": self.clips / max(videos, 1),
            "model_seconds": round(self.model_seconds, 4),
            "clips_per_s": self.clips / max(self.model_seconds, 1e-9),
            "ms_per_video": 1000 * self.model_seconds / max(videos, 1),
            "end_to_end_seconds": round(total, 4),
            "end_to_end_ms_per_video": 1000 * total / max(videos, 1),
        }


class _Window:
    """Sums over the train steps since the last log row, kept on the device (no sync per step).

    It also remembers the first step whose loss was not finite, so the error can name it later.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=self.device)
        self.steps = 0
        self.parts: dict[str, Tensor | float] = {}

    def add(
        self,
        step: int,
        loss: Tensor,
        correct: Tensor,
        count: int,
        parts: dict[str, Tensor | float],
    ) -> None:
        first_bad = (self.bad_step < 0) & ~torch.isfinite(loss)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_value = torch.where(first_bad, loss.float(), self.bad_value)
        self.loss_sum += loss.double() * count
        self.correct += correct
        self.count += count
        self.steps += 1
        for key, value in parts.items():
            # a teacher may report its parts as tensors: they stay on the device until a log step
            part = value.detach() if isinstance(value, Tensor) else float(value)
            self.parts[key] = self.parts.get(key, 0.0) + part

    def first_non_finite(self) -> tuple[int | None, float]:
        """One host read: (step, loss) of the first non-finite loss, or (None, 0)."""
        step, value = torch.stack([self.bad_step.double(), self.bad_value.double()]).tolist()
        return (int(step), value) if step >= 0 else (None, 0.0)


@dataclass
class _Session:
    """Steps this process trained and when it started, for images/s and the ETA."""

    steps: int = 0
    start: float = field(default_factory=time.perf_counter)


_AUTOCAST = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}
