"""Resume semantics: continue exactly, refuse a different config, or apply it when asked to."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from brisk.errors import UserError
from brisk.train import train
from brisk.trainer.schedulers import warmup_cosine


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


FAST = ("debug=fast", "trainer.limit_train_batches=3")


def test_different_config_is_refused_listing_every_key(cfg_digits, tmp_path: Path) -> None:
    train(cfg_digits(*FAST), tmp_path / "a")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as refused:
        train(
            cfg_digits(*FAST, "optimizer.lr=0.5", "trainer.epochs=2", f"ckpt_path={last}"),
            tmp_path / "b",
        )
    message = str(refused.value)
    assert "optimizer.lr: 0.05 -> 0.5" in message and "trainer.epochs: 1 -> 2" in message
    assert "resume_strict=false" in message
    # refused before any work, and recorded as the command line records it
    assert not (tmp_path / "b" / "checkpoints").exists()
    assert not (tmp_path / "b" / "metrics.csv").exists()
    assert _status(tmp_path / "b")["status"] == "failed"


def test_resume_strict_false_applies_the_new_lr_and_schedule_length(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(cfg_digits(*FAST, "trainer.log_every=1"), tmp_path / "a")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    caplog.set_level(logging.INFO, logger="brisk")
    cfg = cfg_digits(
        *FAST,
        "trainer.log_every=1",
        "optimizer.lr=0.5",
        "trainer.epochs=3",
        "resume_strict=false",
        f"ckpt_path={last}",
    )
    train(cfg, tmp_path / "b")
    assert "resume_strict=false" in caplog.text and "schedule rebuilt for 9 steps" in caplog.text
    train_rows = [r for r in _rows(tmp_path / "b") if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(4, 10))  # continues at step 4
    # the lr of every step after the resume follows lr 0.5 over 9 steps, not lr 0.05 over 3
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    schedule = warmup_cosine(optimizer, steps_per_epoch=3, total_steps=9)
    expected = []
    for _ in range(9):
        optimizer.step()
        schedule.step()
        expected.append(optimizer.param_groups[0]["lr"])
    for row in train_rows:
        assert float(row["lr"]) == pytest.approx(expected[int(row["step"]) - 1], rel=1e-5)


def test_resume_strict_false_across_whitening_algorithms_is_a_user_error(
    cfg_digits, tmp_path: Path
) -> None:
    train(cfg_digits(*FAST, "whitening=evd"), tmp_path / "a")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    cfg = cfg_digits(*FAST, "whitening=recursive", "resume_strict=false", f"ckpt_path={last}")
    with pytest.raises(UserError) as refused:
        train(cfg, tmp_path / "b")
    message = str(refused.value)
    assert str(last) in message and "'evd'" in message and "init_from=" in message


def test_init_from_accepts_a_bare_state_dict_and_starts_at_step_zero(
    cfg_digits, tmp_path: Path
) -> None:
    train(cfg_digits(*FAST), tmp_path / "a")
    weights = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model"]
    bare = tmp_path / "weights.pt"
    torch.save(weights, bare)
    train(cfg_digits(*FAST, "optimizer.lr=0.01", f"init_from={bare}"), tmp_path / "c")
    steps = [int(r["step"]) for r in _rows(tmp_path / "c") if r["split"] == "train"]
    assert steps == [1, 2, 3]
    assert _status(tmp_path / "c")["status"] == "ok"
    with pytest.raises(UserError, match="give one"):
        train(
            cfg_digits(*FAST, f"init_from={bare}", f"ckpt_path={bare}"),
            tmp_path / "d",
        )
    with pytest.raises(UserError, match="not a brisk training checkpoint"):
        train(cfg_digits(*FAST, f"ckpt_path={bare}"), tmp_path / "e")


def test_own_last_checkpoint_wins_over_ckpt_path_and_says_so(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(cfg_digits(*FAST), tmp_path / "a")
    train(cfg_digits(*FAST), tmp_path / "b")
    caplog.set_level(logging.INFO, logger="brisk")
    other = tmp_path / "a" / "checkpoints" / "last.pt"
    train(cfg_digits(*FAST, f"ckpt_path={other}"), tmp_path / "b")
    assert f"ckpt_path={other} is ignored" in caplog.text
    assert f"resumed from {tmp_path / 'b' / 'checkpoints' / 'last.pt'}" in caplog.text


def test_finished_run_keeps_its_record_and_metrics(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "a"
    train(cfg_digits(*FAST), run)
    before = _status(run)
    rows_before = _rows(run)
    train(cfg_digits(*FAST), run)  # re-running a finished run: nothing to do
    assert _rows(run) == rows_before
    assert [r["split"] for r in _rows(run)].count("test") == 1
    assert _status(run)["test_acc1"] == before["test_acc1"]
    assert "last_attempt" not in _status(run)  # that attempt succeeded

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the data went away")

    monkeypatch.setattr("brisk.train.setup_data", broken)
    with pytest.raises(RuntimeError):
        train(cfg_digits(*FAST), run)
    after = _status(run)
    assert after["status"] == "ok" and after["test_acc1"] == before["test_acc1"]
    assert after["last_attempt"]["status"] == "failed"
    assert "the data went away" in after["last_attempt"]["error"]


def test_resume_auto_skips_foreign_and_malformed_checkpoints(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "outputs" / "runs"
    for name, content in (("tensor", torch.zeros(3)), ("list", [1, 2])):
        (runs / name / "checkpoints").mkdir(parents=True)
        torch.save(content, runs / name / "checkpoints" / "last.pt")
    (runs / "cut" / "checkpoints").mkdir(parents=True)
    (runs / "cut" / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    train(cfg_digits(*FAST), runs / "first")
    caplog.set_level(logging.INFO, logger="brisk")
    train(cfg_digits(*FAST, "resume=auto"), runs / "second")
    assert f"resume=auto: continuing {runs / 'first'}" in caplog.text
    assert "skipping" in caplog.text


def test_a_run_that_crashed_after_its_test_writes_the_test_row_once(
    cfg_digits, tmp_path: Path
) -> None:
    run = tmp_path / "a"
    train(cfg_digits(*FAST), run)
    status = _status(run)
    status["status"] = "failed"  # as if recording the result had failed after the test
    (run / "status.json").write_text(json.dumps(status))
    train(cfg_digits(*FAST), run)
    assert [r["split"] for r in _rows(run)].count("test") == 1
    assert _status(run)["status"] == "ok"


def test_resume_auto_continues_a_run_stopped_in_its_teacher_stage(
    cfg_digits, tmp_path: Path
) -> None:
    from brisk.run.checkpoint import config_fingerprint
    from brisk.run.resume import identity_yaml, plan_resume

    cfg = cfg_digits(*FAST, "resume=auto")
    identity = identity_yaml(cfg)
    runs = tmp_path / "outputs" / "runs"
    stage = runs / "stopped" / "teacher" / "checkpoints"
    stage.mkdir(parents=True)
    torch.save({"config_fingerprint": config_fingerprint(identity)}, stage / "last.pt")
    plan = plan_resume(cfg, runs / "new", identity)
    assert plan.run_dir == runs / "stopped" and plan.checkpoint is None


def test_values_from_the_environment_are_refused_in_what_a_run_records(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``name=${oc.env:SECRET_TOKEN}`` would put the token in status.json, last.pt, best.pt and
    TensorBoard: refused in one message naming the key, and the value is written nowhere."""
    from brisk.run.resume import identity_yaml

    monkeypatch.setenv("SECRET_TOKEN", "tok-5ecr3t-value")
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"name=\$\{oc.env:SECRET_TOKEN\}.*environment"):
        train(cfg_digits(*FAST, "name=${oc.env:SECRET_TOKEN}"), run)
    assert not (run / "checkpoints").exists() and not (run / "tensorboard").exists()
    for path in run.rglob("*"):
        assert not path.is_file() or b"tok-5ecr3t-value" not in path.read_bytes(), path
    assert _status(run)["status"] == "failed"
    # through another key too; a location read from the environment is not recorded: allowed,
    # and the run's identity (what resume=auto and the resume checks compare) is unchanged
    with pytest.raises(UserError, match="name="):
        identity_yaml(cfg_digits("ckpt_path=${oc.env:SECRET_TOKEN}", "name=${ckpt_path}"))
    monkeypatch.setenv("BRISK_TEST_OUT", str(tmp_path / "outputs"))
    from_env = identity_yaml(cfg_digits("paths.output_dir=${oc.env:BRISK_TEST_OUT}"))
    assert from_env == identity_yaml(cfg_digits()) and "tok-5ecr3t" not in from_env
