"""How a run's end reaches the user (``brisk.run.failures``): one line and exit status 2 for what
the user can fix, with the traceback kept in status.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from tests.conftest import run_train

from brisk.errors import UserError
from brisk.run import failures
from brisk.run.failures import run_command, user_error_in


def test_a_user_error_wrapped_by_a_library_is_still_a_user_error() -> None:
    try:
        try:
            raise UserError("model.checkpoint: SmallCNN does not take published weights")
        except UserError as err:
            raise InstantiationException("Error in call to target 'create_model'") from err
    except InstantiationException as wrapped:
        found = user_error_in(wrapped)
    assert isinstance(found, UserError) and "model.checkpoint" in str(found)
    assert user_error_in(RuntimeError("a bug")) is None


def _exit_status(
    monkeypatch: pytest.MonkeyPatch, failed: list[bool], end: BaseException | None
) -> tuple[object, bool]:
    """The exit status ``run_command`` gives when Hydra ends with ``end`` after jobs ``failed``."""
    explained: list[list[str]] = []
    monkeypatch.setattr(failures, "_failures", list(failed))
    monkeypatch.setattr(failures, "explain_failure", explained.append)

    def hydra_main() -> None:
        if end is not None:
            raise end

    try:
        run_command(hydra_main, ["optimizer.lrr=1"])
    except SystemExit as exit_:
        return exit_.code, bool(explained)
    except Exception:
        return 1, bool(explained)
    return 0, bool(explained)


def test_one_exit_status_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _exit_status(monkeypatch, [], None) == (0, False)
    assert _exit_status(monkeypatch, [True], SystemExit(2)) == (2, False)  # already one line
    assert _exit_status(monkeypatch, [], SystemExit(143)) == (143, True)
    # a sweep: Hydra reports the first failed job with exit 1; a user error first makes it 2
    assert _exit_status(monkeypatch, [True, False], SystemExit(1)) == (2, True)
    assert _exit_status(monkeypatch, [False, True], SystemExit(1)) == (1, True)
    # HYDRA_FULL_ERROR=1: the exception itself, explained once
    assert _exit_status(monkeypatch, [], RuntimeError("bug")) == (1, True)


@pytest.mark.slow
def test_eval_only_model_checkpoint_and_a_nonfinite_loss_end_with_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, weights)  # fits no model here
    cases = {
        "eval_missing": (["eval_only=true", f"ckpt_path={tmp_path / 'none.pt'}"], "none.pt"),
        "eval_misfit": (["eval_only=true", f"ckpt_path={weights}"], "does not fit the model"),
        "model_checkpoint": ([f"+model.checkpoint={weights}"], "model.checkpoint"),
        # step 1 is finite and checkpointed; lr 1e30 makes step 2's loss NaN
        "nonfinite": (["optimizer.lr=1e30", "trainer.checkpoint_every=1"], "at step 2"),
    }
    for name, (overrides, expected) in cases.items():
        run = tmp_path / name
        proc = run_train(
            "debug=fast",
            "trainer.threads=1",
            *overrides,
            f"hydra.run.dir={run}",
            env={"HYDRA_FULL_ERROR": "0"},
            check=False,
        )
        errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
        assert proc.returncode == 2, (name, proc.stderr[-3000:])
        assert len(errors) == 1 and expected in errors[0], (name, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "failed" and expected in status["error"], (name, status)
        assert "Traceback" in status["traceback"], name
        if name == "nonfinite":
            last = run / "checkpoints" / "last.pt"
            assert f"last good checkpoint: {last}" in errors[0]
            assert torch.load(last, weights_only=True)["step"] == 1
