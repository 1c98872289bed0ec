"""A SLURM job of a sweep that is signalled mid-epoch saves at that step, is requeued, continues,
and ends with the weights of a run that was never interrupted."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO_ROOT
from tests.slurm.conftest import LAUNCHER, finish, job_env, start_train, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

STEPS_PER_EPOCH = 8
# 2 epochs of 8 steps; a training step sleeps 0.5 s, so a signal lands in the middle of an epoch
RUN = (
    "debug=fast",
    "trainer.epochs=2",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    "trainer.checkpoint_every=100",  # no periodic checkpoint: only the signal's save is mid-epoch
    "trainer.log_every=1",
    "trainer.deterministic=true",
    "model._target_=tests.slurm.slow_model.slow_model",
)
SIGNALS = ("USR2", "TERM")


def train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]


def slurm_job_id(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("slurm_job_id")
    except (OSError, ValueError):
        return None


def array_task(job_id: str) -> str:
    """``ARRAY_TASK`` for a job id: scancel with an array's first task id signals them all."""
    listing = subprocess.run(
        ["squeue", "-h", "-o", "%A %i"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    names = dict(line.split() for line in listing.splitlines() if line.strip())
    return names[job_id]


def test_signalled_jobs_save_requeue_and_finish_like_an_uninterrupted_run(
    slurm_cluster: None, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # one job per signal: the label changes nothing in the run (tests/slurm/slow_model.py)
    labels = ",".join(s.lower() for s in SIGNALS)
    command = [sys.executable, "-m", "brisk.train", "-m", *LAUNCHER, *RUN]
    command += ["+model.delay_s=0.5", f"+model.label={labels}", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, **job_env(), "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    launcher = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    reference = tmp_path / "reference"
    uninterrupted = None
    try:
        seen, tasks = {}, {}
        for num, name in enumerate(SIGNALS):
            run_dir = sweep / str(num)
            wait_for(lambda d=run_dir: len(train_steps(d)) >= 2, 240, f"job {num} to train")
            seen[name] = len(train_steps(run_dir))
            tasks[name] = array_task(str(slurm_job_id(run_dir)))
            subprocess.run(["scancel", f"--signal={name}", tasks[name]], check=True, timeout=30)
        # the uninterrupted run, while the jobs wait to be started again
        uninterrupted = start_train(
            *RUN, "+model.delay_s=0", "trainer.threads=1", f"hydra.run.dir={reference}"
        )
        output, _ = launcher.communicate(timeout=360)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, output
    finish(uninterrupted)
    expected = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]

    for num, name in enumerate(SIGNALS):
        run_dir = sweep / str(num)
        log = (run_dir / "train.log").read_text()
        stopped = re.search(rf"stopped by SIG{name} after step (\d+)", log)
        assert stopped, log
        step = int(stopped.group(1))
        # saved at the step it was in: after the rows seen when signalled, inside the first epoch
        assert seen[name] <= step < STEPS_PER_EPOCH, (seen, step)
        assert f"requeued SLURM job {tasks[name]}" in log
        assert re.search(rf"resumed from .*last\.pt at step {step}\b", log), log
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "ok" and status["steps"] == 2 * STEPS_PER_EPOCH
        assert train_steps(run_dir) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
        weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert weights.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(weights[key], value), (name, key)
