"""A parallel sweep (``hydra/launcher=parallel``) stopped by a signal loses no job's work: every
running job saves ``last.pt`` at the step it stopped after, no new job starts, ``train`` exits with
128 + the signal number, and the same command continues the sweep.

Without brisk's handling the first worker to exit broke joblib's pool, which then killed the other
workers with SIGKILL in the middle of their steps: they lost everything since their last
checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _trained_steps(job: Path) -> int:
    try:
        with (job / "metrics.csv").open() as f:
            return sum(row["split"] == "train" for row in csv.DictReader(f))
    except (OSError, KeyError):
        return 0


def _sweep(sweep: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "brisk.train",
            "-m",
            "hydra/launcher=parallel",
            "trainer.threads=1",
            "trainer.log_every=1",
            "seed=0,1,2",
            f"hydra.sweep.dir={sweep}",
            *extra,
        ],
        cwd=sweep.parent,
        env={**base, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal or a scheduler gives it
    )


@pytest.mark.parametrize("target", ["submitting process", "process group"])
def test_a_stopped_parallel_sweep_saves_every_running_job_and_starts_no_new_one(
    tmp_path: Path, target: str
) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "trainer.epochs=400")  # 7,200 steps: far longer than the test
    try:
        deadline = time.monotonic() + 300
        while min(_trained_steps(sweep / "0"), _trained_steps(sweep / "1")) < 3:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the two jobs did not start training"
            time.sleep(0.2)
        if target == "submitting process":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert "the same command continues it" in err and "Traceback" not in err
    # a stop is not a failure: no Hydra error banner around brisk's line
    assert "Error executing job" not in err and "HYDRA_FULL_ERROR" not in err, err[-3000:]
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "interrupted" and status["signal"] == "SIGTERM", status
        saved = torch.load(sweep / job / "checkpoints" / "last.pt", weights_only=True)
        assert saved["step"] == status["step"] == _trained_steps(sweep / job) >= 3
    assert not (sweep / "2" / "checkpoints").exists()  # the third job never started
    assert not (sweep / ".stop").exists()


def test_a_job_signalled_alone_stops_the_sweep_and_the_same_command_continues_it(
    tmp_path: Path,
) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    common = ("trainer.epochs=2", "trainer.deterministic=true")  # 36 steps a job
    # a job sends itself SIGTERM after its step 5; the first to get there stops the other too
    proc = _sweep(sweep, *common, env={"BRISK_FAULT_AT_STEP": "5", "BRISK_FAULT_SIGNAL": "TERM"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    stopped_at = []
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        saved = torch.load(sweep / job / "checkpoints" / "last.pt", weights_only=True)
        assert status["status"] == "interrupted" and saved["step"] == status["step"] <= 5
        stopped_at.append(status["step"])
    assert 5 in stopped_at
    assert not (sweep / "2" / "checkpoints").exists()

    proc = _sweep(sweep, *common)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    for job in ("0", "1", "2"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "ok"
        with (sweep / job / "metrics.csv").open() as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]
        assert steps == list(range(1, 37)), job  # resumed at step 6, nothing repeated or lost


def test_a_killed_job_is_recorded_as_failed_and_the_other_jobs_finish(tmp_path: Path) -> None:
    """``kill -9`` of one job's process: joblib's pool used to break, killing the healthy job
    mid-run and leaving every status ``running`` and no summary."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "trainer.epochs=2", "trainer.checkpoint_every=1")  # 36 steps a job
    try:
        deadline = time.monotonic() + 300
        while min(_trained_steps(sweep / "0"), _trained_steps(sweep / "1")) < 3:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the two jobs did not start training"
            time.sleep(0.2)
        victim = int((sweep / "0" / ".lock").read_text())  # the job's process holds its lock
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]  # a failed job, reported last in one line
    assert "job #0" in err and "killed by SIGKILL" in err and "Traceback" not in err, err[-3000:]
    dead = json.loads((sweep / "0" / "status.json").read_text())
    assert dead["status"] == "failed" and dead["signal"] == "SIGKILL", dead
    assert "killed by SIGKILL" in dead["error"]
    assert torch.load(sweep / "0" / "checkpoints" / "last.pt", weights_only=True)["step"] >= 3
    for job in ("1", "2"):  # the running one finished, the waiting one started and finished
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "ok" and _trained_steps(sweep / job) == 36, (job, status)
    summary = (sweep / "summary.md").read_text()
    assert "3 jobs: 1 failed, 2 ok." in summary and "killed by SIGKILL" in summary, summary


def test_a_user_error_in_a_parallel_job_ends_the_sweep_with_status_2(tmp_path: Path) -> None:
    """As a sweep in one process does: the other jobs finish, the bad one says why in one line."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "debug=fast", "trainer.epochs=1,-1", "seed=0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "brisk: error: invalid config value: trainer.epochs=-1" in err
    assert "Traceback" not in err, err[-3000:]
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "ok"
