"""Shared fixtures: where the optional real data lives, a quiet torch, in-process Hydra compose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip on a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


def compose_config(*overrides: str) -> DictConfig:
    """The config ``train OVERRIDES`` would run, composed in-process (no Hydra run directory)."""
    from hydra import compose, initialize_config_module

    from brisk.config import CONFIG_NAME

    with initialize_config_module(config_module="brisk.conf", version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))


@pytest.fixture
def cfg_digits(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a one-thread digits config whose outputs land in ``tmp_path``; add overrides."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config(
            f"paths.output_dir={tmp_path / 'outputs'}", "trainer.threads=1", *overrides
        )

    return _compose


def run_train(
    *overrides: str,
    cwd: Path | None = None,
    env: dict | None = None,
    check: bool = True,
    timeout: int = 600,
):
    """Run ``python -m brisk.train`` in a subprocess, as a user would; fail showing its output."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "brisk.train", *overrides],
        cwd=cwd or REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train {' '.join(overrides)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def kill_and_resume(tmp_path: Path, *overrides: str) -> tuple[dict, dict, dict, int]:
    """A deterministic 3-epoch digits run three ways: uninterrupted (``full``), SIGKILLed at step 28
    mid-epoch 2 (``cut``, its last checkpoint), then resumed with ``resume=auto``. Returns the full
    run's, the cut run's and the resumed run's ``last.pt`` and the killed process's exit status."""
    common = [
        *overrides,
        "trainer.deterministic=true",
        "trainer.epochs=3",
        "trainer.checkpoint_every=5",
        "trainer.log_every=1",
    ]
    run_train(*common, f"hydra.run.dir={tmp_path / 'full'}")
    killed = run_train(
        *common, f"hydra.run.dir={tmp_path / 'cut'}", env={"BRISK_FAULT_AT_STEP": "28"}, check=False
    )
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    cut = torch.load(last, weights_only=True)
    run_train(*common, "resume=auto", f"hydra.run.dir={tmp_path / 'cut'}")
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    return full, cut, torch.load(last, weights_only=True), killed.returncode


def write_fake_cifar(
    root: Path, per_class_train: int = 20, per_class_test: int = 5, classes: int = 10
) -> Path:
    """A tiny CIFAR-10 in the official python layout (random pixels, correct structure)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n_per_class: int) -> dict:
        labels = np.repeat(np.arange(classes), n_per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # a learnable red channel
        return {b"data": data, b"labels": labels.tolist()}

    for i in range(1, 6):
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump(batch(per_class_train // 5 or 1), f)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(batch(per_class_test), f)
    return root


@pytest.fixture(scope="session")
def shared_cifar10(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 rebuilt into the standard python layout; the folder to use as data_dir.

    Under pytest-xdist the workers share one build: the first builds it under a lock in the run's
    common temp folder (a completed folder is renamed into place), the others wait and reuse it.
    """
    import os
    import subprocess
    import sys

    from filelock import FileLock

    def build(data_dir: Path) -> None:
        tool = shared_data.parent / "tools" / "build_cifar10.py"
        subprocess.run(
            [
                sys.executable,
                str(tool),
                str(shared_data / "cifar10"),
                str(data_dir / "cifar-10-batches-py"),
            ],
            check=True,
            capture_output=True,
        )

    if "PYTEST_XDIST_WORKER" not in os.environ:
        data_dir = tmp_path_factory.mktemp("cifar10")
        build(data_dir)
        return data_dir
    # each worker's basetemp is popen-gwN inside this run's pytest-N folder
    run_root = tmp_path_factory.getbasetemp().parent
    data_dir = run_root / "cifar10"
    with FileLock(str(run_root / "cifar10.lock")):
        if not data_dir.is_dir():
            partial = tmp_path_factory.mktemp("cifar10-partial")
            build(partial)
            partial.rename(data_dir)
    return data_dir
