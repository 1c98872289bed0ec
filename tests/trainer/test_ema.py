"""trainer.ema: the averaged weights follow the EMA formula, are evaluated beside the raw weights,
and survive a kill and resume exactly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tests.conftest import kill_and_resume
from torch import nn

from brisk.errors import ConfigValueError
from brisk.run.resume import identity_yaml
from brisk.train import train
from brisk.trainer.ema import ModelEMA, ema_decay

FAST = ("debug=fast", "trainer.limit_train_batches=3")


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_average_follows_the_warmed_up_decay_for_weights_and_bn_buffers() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(model, decay=0.9, warmup_steps=2)
    expected = {k: v.clone().float() for k, v in model.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(8, 3))  # moves the running statistics
        ema.update(model, step)
        d = 0.0 if step == 1 else ema_decay(0.9, 2, step)  # the first update copies
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            expected[key] = d * expected[key] + (1 - d) * value.float()
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(averaged[key], value, msg=key)
    assert ema_decay(0.9, 2, 2) == pytest.approx(0.9 * (1 - math.exp(-1)))
    assert ema_decay(0.9, 0, 1) == 0.9


def test_average_carries_no_hooks_of_the_model() -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    calls: list[int] = []
    model[0].register_forward_hook(lambda *_: calls.append(1))
    model[0].register_forward_pre_hook(lambda *_: calls.append(2))
    ema = ModelEMA(model, decay=0.5, warmup_steps=0)
    ema.module(torch.randn(2, 3))
    assert calls == []
    model(torch.randn(2, 3))
    assert calls == [2, 1]  # the model keeps its own


def test_decay_zero_makes_the_average_the_raw_weights(cfg_digits, tmp_path: Path) -> None:
    """With decay 0 the average is the last weights: its metrics must equal the raw ones, in every
    validation row and in the test row (a wrong buffer, model or prefix breaks the equality)."""
    cfg = cfg_digits(*FAST, "trainer.epochs=2", "trainer.ema.enabled=true", "trainer.ema.decay=0")
    train(cfg, tmp_path)
    evaluated = [r for r in _rows(tmp_path) if r["split"] in ("val", "test")]
    assert [r["split"] for r in evaluated] == ["val", "val", "test"]
    for row in evaluated:
        for name in ("loss", "acc1", "acc5"):
            assert float(row[f"ema_{name}"]) == pytest.approx(float(row[name]), abs=1e-5)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["test_ema_acc1"] == pytest.approx(status["test_acc1"])
    assert status["best_val_ema_acc1"] == pytest.approx(status["best_val_acc1"])


def test_slow_average_differs_and_is_in_the_checkpoints(cfg_digits, tmp_path: Path) -> None:
    cfg = cfg_digits(*FAST, "trainer.ema.enabled=true", "trainer.ema.warmup_steps=0")
    train(cfg, tmp_path)
    val = next(r for r in _rows(tmp_path) if r["split"] == "val")
    assert float(val["ema_loss"]) != pytest.approx(float(val["loss"]), abs=1e-4)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert int(state["ema"]["n_averaged"]) == 3
        assert set(state["model"]) == {k.removeprefix("module.") for k in state["ema"]} - {
            "n_averaged"
        }


def test_ema_off_leaves_the_run_identity_as_before(cfg_digits) -> None:
    assert "ema" not in identity_yaml(cfg_digits())
    assert "ema:" in identity_yaml(cfg_digits("trainer.ema.enabled=true"))


def test_out_of_range_decay_is_a_config_error(cfg_digits, tmp_path: Path) -> None:
    with pytest.raises(ConfigValueError, match=r"trainer\.ema\.decay=1\.5"):
        train(cfg_digits("trainer.ema.enabled=true", "trainer.ema.decay=1.5"), tmp_path)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_averaged_weights(tmp_path: Path) -> None:
    full, cut, resumed, killed = kill_and_resume(
        tmp_path, "trainer.ema.enabled=true", "trainer.ema.warmup_steps=5"
    )
    assert killed != 0 and cut["step"] == 25 and int(cut["ema"]["n_averaged"]) == 25
    assert resumed["step"] == full["step"] == 54
    assert int(resumed["ema"]["n_averaged"]) == 54
    for key, value in full["ema"].items():
        assert torch.equal(value, resumed["ema"][key]), key
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["best_val_ema"] == full["best_val_ema"]


def test_the_average_leaves_the_raw_training_unchanged(cfg_digits, tmp_path: Path) -> None:
    """Same train, val and test rows for the raw weights with and without trainer.ema."""
    train(cfg_digits(*FAST, "trainer.epochs=2"), tmp_path / "off")
    train(cfg_digits(*FAST, "trainer.epochs=2", "trainer.ema.enabled=true"), tmp_path / "on")
    columns = ("step", "split", "loss", "acc1", "lr")
    off, on = _rows(tmp_path / "off"), _rows(tmp_path / "on")
    assert [[r[c] for c in columns] for r in off] == [[r[c] for c in columns] for r in on]
