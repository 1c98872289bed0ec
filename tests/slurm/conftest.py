"""The SLURM tests run brisk against a real cluster: ``scripts/slurm_local.sh up`` starts one on
this machine (root), and CI does so before the suite. Without one they skip, saying why."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import REPO_ROOT, run_train

# The launcher as the tests use it: CPU jobs of one core on the one-node cluster. Jobs last well
# under timeout_min; signal_delay_s stays small next to it, or submitit's USR2 comes early and is
# taken for a time-out.
LAUNCHER = (
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=5",
    "hydra.launcher.signal_delay_s=30",
    "trainer.threads=1",
)


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo, sbatch): start one with sudo scripts/slurm_local.sh up"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return (
            "no SLURM controller answers (sinfo timed out): "
            "start one with sudo scripts/slurm_local.sh up"
        )
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no nodes"]
        return f"no usable SLURM node ({reason[0]}): start one with sudo scripts/slurm_local.sh up"
    return None


@pytest.fixture(autouse=True)
def _one_cluster_test_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under pytest-xdist, the tests marked ``slurm`` take turns on the one cluster.

    They carry ``xdist_group("slurm")`` for ``--dist loadgroup``, which keeps them on one worker
    (pytest is pinned below 9.1: 9.2 drops the group silently, pytest-dev/pytest-xdist#1386). The
    lock in the run's shared temp folder is the safeguard when the group is not honoured.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ or request.node.get_closest_marker("slurm") is None:
        yield
        return
    from filelock import FileLock

    with FileLock(str(tmp_path_factory.getbasetemp().parent / "slurm-cluster.lock")):
        yield


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skips unless a SLURM answers with an idle node and the slurm extra is installed."""
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip('the slurm extra is not installed (pip install -e ".[slurm]")')


def job_env() -> dict[str, str]:
    """The jobs import the slowed-down test model (tests.slurm.slow_model) from the checkout."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)}


def slurm_train(*overrides: str, check: bool = True, timeout: int = 420):
    """``train -m <overrides>`` on the SLURM launcher, from the checkout."""
    return run_train("-m", *LAUNCHER, *overrides, env=job_env(), check=check, timeout=timeout)


def start_train(*overrides: str) -> subprocess.Popen:
    """``train`` started in the background: a reference run that overlaps the SLURM jobs' waits."""
    import sys

    env = {**os.environ, **job_env(), "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "brisk.train", *overrides],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 420) -> str:
    """Wait for a process of :func:`start_train`; fail with its output unless it exited 0."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    return output


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def sbatch(*args: str, env: dict[str, str], timeout_s: float = 300) -> tuple[str, str]:
    """Submit a batch job and wait for it; returns its id and final state (COMPLETED, FAILED, ...).

    Polls ``scontrol show job`` every half second: ``sbatch --wait`` backs off and noticed a 12 s
    job after 42 s here.
    """
    job_id = (
        subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        .stdout.strip()
        .split(";")[0]
    )

    def final_state() -> str | None:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
        ).stdout
        state = next((f.split("=", 1)[1] for f in shown.split() if f.startswith("JobState=")), "")
        running = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "")
        return None if state in running else state

    return job_id, wait_for(final_state, timeout_s, f"SLURM job {job_id}", poll_s=0.5)


def submitted_arrays(sweep_dir: Path) -> list[str]:
    """The ``#SBATCH --array=`` values of the sweep's submissions, one per sbatch call."""
    arrays = []
    for script in sorted((sweep_dir / ".submitit").glob("*/*_submission.sh")):
        for line in script.read_text().splitlines():
            if line.startswith("#SBATCH --array="):
                arrays.append(line.split("=", 1)[1])
    return arrays
