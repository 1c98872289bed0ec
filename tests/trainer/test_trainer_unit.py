"""The Trainer built directly from a composed config: no subprocess, tracebacks in plain sight."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from brisk.run.context import RunContext
from brisk.run.distributed import DistInfo
from brisk.run.run_dir import RunPaths
from brisk.run.setup import setup_data
from brisk.teacher.base import Teacher
from brisk.trainer.loop import Trainer


def _trainer(cfg: DictConfig, run_dir: Path, teacher: Teacher | None = None) -> Trainer:
    data = setup_data(cfg.dataset, DistInfo())
    ctx = RunContext(data, RunPaths(run_dir), seed=cfg.seed, config_yaml="seed: 0\n")
    model = instantiate(cfg.model, num_classes=data.num_classes)
    return Trainer(
        ctx,
        model,
        cfg.trainer,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler),
        instantiate(cfg.whitening),
        teacher,
    )


class _NanAt(Teacher):
    """Makes the loss of one optimizer step (1-based) NaN, as a diverging run would."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def loss(
        self, student_out: Tensor, batch: dict[str, Any], hard_loss: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        self.calls += 1
        return (hard_loss * float("nan") if self.calls == self.step else hard_loss), {}


class _StringTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_trainer_fits_and_writes_checkpoints(cfg_digits, tmp_path: Path) -> None:
    trainer = _trainer(cfg_digits("debug=fast"), tmp_path)
    result = trainer.fit()
    trainer.close()
    assert result.step == 4 and result.epoch == 1 and result.best_val is not None
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 4


def test_a_step_does_not_wait_for_the_device(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between log steps nothing reads a tensor back to the host (item, tolist, bool)."""
    trainer = _trainer(cfg_digits("debug=fast", "trainer.log_every=100"), tmp_path)
    trainer.open_logger()
    from brisk.trainer.data_loading import as_batch_dict
    from brisk.trainer.loop import _Session, _Window

    trainer._window, trainer._session = _Window(trainer.device), _Session()
    loader = iter(trainer.train_loader)
    batches = [as_batch_dict(next(loader)) for _ in range(3)]
    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(Tensor, name)

        def counting(self: Tensor, *a: Any, _name: str = name, _f: Any = original) -> Any:
            reads.append(_name)
            return _f(self, *a)

        monkeypatch.setattr(Tensor, name, counting)
    for batch in batches:
        trainer._train_step(batch)
        trainer.step += 1
    monkeypatch.undo()
    assert reads == []
    trainer.close()


@pytest.mark.parametrize("checkpoint_every", [None, 2])
def test_non_finite_loss_names_its_step_and_the_last_good_checkpoint(
    cfg_digits, tmp_path: Path, checkpoint_every: int | None
) -> None:
    cfg = cfg_digits(
        "debug=fast",
        "trainer.log_every=4",
        f"trainer.checkpoint_every={checkpoint_every or 'null'}",
    )
    trainer = _trainer(cfg, tmp_path, teacher=_NanAt(3))
    with pytest.raises(FloatingPointError) as diverged:
        trainer.fit()  # detected at the log of step 4, or the checkpoint: reported as step 3
    message = str(diverged.value)
    assert "at step 3" in message
    if checkpoint_every:
        assert f"last good checkpoint: {tmp_path / 'checkpoints' / 'last.pt'}" in message
        state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
        assert state["step"] == 2
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        )
    else:
        assert "no checkpoint was written" in message
        assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_progress_bar_on_a_terminal_only(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="brisk")
    outputs = {}
    for name, stream in (("tty", _StringTTY()), ("file", io.StringIO())):
        trainer = _trainer(cfg_digits("debug=fast"), tmp_path / name)
        trainer.progress_stream = stream
        trainer.fit()
        trainer.close()
        outputs[name] = stream.getvalue()
    assert "epoch 1/1" in outputs["tty"] and "img/s" in outputs["tty"]
    assert "loss=" in outputs["tty"]
    assert "val: " in outputs["tty"] and "2/2" in outputs["tty"]  # validation's bar, in batches
    assert outputs["file"] == ""
    assert caplog.text.count("epoch 1/1 step") == 8  # the log lines are the same in both modes


def test_teacher_base_declares_what_the_runner_reads() -> None:
    from brisk.teacher import RGBI3DTeacher
    from brisk.teacher.base import NoTeacher

    none = NoTeacher()
    assert (none.model, none.whitening, none.input_key, none.epochs) == (None, None, "input", None)
    i3d = RGBI3DTeacher(width_mult=0.25, epochs=3)  # served from its config, not shadowed
    assert (i3d.input_key, i3d.epochs) == ("rgb", 3)


def test_acc5_is_left_out_with_five_classes_or_fewer_and_classes_weigh_alike() -> None:
    from brisk.trainer.evaluation import EvalAccumulator

    # class 0: 3 samples, all right; class 1: 1 sample, wrong (predicted 0)
    logits = torch.tensor([[5.0, 0, 0, 0], [5.0, 0, 0, 0], [5.0, 0, 0, 0], [5.0, 0, 0, 0]])
    target = torch.tensor([0, 0, 0, 1])
    few = EvalAccumulator(4)
    few.add(logits, target)
    metrics = few.compute()
    assert "acc5" not in metrics and metrics["acc1"] == 0.75
    assert metrics["mean_class_acc1"] == 0.5  # (1 + 0) / 2: classes 2 and 3 have no sample
    rows = few.per_class(["a", "b", "c", "d"])
    assert rows[1]["most_confused_with"] == "a" and rows[1]["accuracy"] == 0.0
    many = EvalAccumulator(6)
    many.add(torch.nn.functional.pad(logits, (0, 2)), target)
    assert "acc5" in many.compute()


def test_evaluation_bar_on_rank_zero_only(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(cfg_digits("debug=fast"), tmp_path)
    trainer.progress_stream = stream = _StringTTY()
    trainer.evaluate("test")
    assert "test: " in stream.getvalue() and "batch" in stream.getvalue()
    monkeypatch.setenv("RANK", "1")
    trainer.progress_stream = stream = _StringTTY()
    trainer.evaluate("test")
    assert stream.getvalue() == ""
    trainer.close()


def test_the_run_says_what_it_costs_after_its_first_steps(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="brisk")
    cfg = cfg_digits("trainer.epochs=2", "trainer.log_every=100", "trainer.limit_eval_batches=1")
    trainer = _trainer(cfg, tmp_path)
    trainer.fit()
    trainer.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("this run:")]
    assert len(lines) == 1, caplog.text  # once, after the first steps
    spe = trainer.steps_per_epoch
    assert lines[0].startswith(f"this run: {2 * spe} steps (2 epochs x {spe} steps) at ")
    assert "s/step (steps 2-6), about " in lines[0] and "ends around " in lines[0]
    # logged before the run's sixth step ended: the estimate comes first, not at the end
    messages = [r.getMessage() for r in caplog.records]
    first_validation = next(m for m in messages if m.startswith("validation after epoch"))
    assert messages.index(lines[0]) < messages.index(first_validation)
