"""Preemption: a stop signal saves the run at the step it arrived, and the run resumes from
there."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from tests.conftest import run_train

from brisk.run.signals import RunInterrupted, StopSignals, exit_code


def _train_steps(run_dir: Path) -> list[int]:
    with (run_dir / "metrics.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]


def test_first_signal_sets_the_request_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert not stop.requested and not stop.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.agreed() and stop.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before
    stopped = RunInterrupted(signal.SIGTERM, 7, "x/last.pt")
    assert stopped.exit_code == exit_code(signal.SIGTERM) == 143
    assert "SIGTERM" in str(stopped) and "step 7" in str(stopped)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resume_loses_no_step(tmp_path: Path) -> None:
    common = ["trainer.deterministic=true", "trainer.epochs=2", "trainer.log_every=1"]
    run_train(*common, f"hydra.run.dir={tmp_path / 'full'}")
    cut = tmp_path / "cut"
    # digits: 18 steps per epoch; SIGTERM arrives after step 23, in the middle of epoch 2
    stopped = run_train(
        *common,
        f"hydra.run.dir={cut}",
        env={"BRISK_FAULT_AT_STEP": "23", "BRISK_FAULT_SIGNAL": "TERM"},
        check=False,
    )
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    status = json.loads((cut / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert status["step"] == 23
    assert torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["step"] == 23
    assert _train_steps(cut) == list(range(1, 24))

    run_train(*common, "resume=auto", f"hydra.run.dir={cut}")
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["step"] == full["step"] == 36
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert _train_steps(cut) == list(range(1, 37))  # no step repeated or lost
    assert json.loads((cut / "status.json").read_text())["status"] == "ok"


def test_second_interrupt_exits_at_once_without_a_traceback() -> None:
    import subprocess
    import sys

    script = (
        "import os, signal, time\n"
        "from brisk.run.signals import StopSignals\n"
        "with StopSignals():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGINT
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    from tests.distributed.test_torchrun import COMMON, torchrun

    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun(*COMMON, f"hydra.run.dir={full}", output_dir=tmp_path)
    stopped = torchrun(
        *COMMON,
        f"hydra.run.dir={cut}",
        output_dir=tmp_path,
        env={"BRISK_FAULT_AT_STEP": "4", "BRISK_FAULT_RANK": "1", "BRISK_FAULT_SIGNAL": "TERM"},
        check=False,
    )
    assert stopped.returncode != 0
    status = json.loads((cut / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 4, status
    state = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and len(state["rng_per_rank"]) == 2  # both ranks took part
    torchrun(*COMMON, f"hydra.run.dir={cut}", output_dir=tmp_path)
    reference = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    assert _train_steps(cut) == list(range(1, 11))
