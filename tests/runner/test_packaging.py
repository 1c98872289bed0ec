"""A regular (wheel) install finds the configs too: conf/ ships inside the package as brisk.conf."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_wheel_install_composes_configs_from_any_directory(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("brisk-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    where = subprocess.run(
        [sys.executable, "-c", "import brisk.conf; print(brisk.conf.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(tmp_path / "site")), where  # the wheel's copy, not the source tree
    proc = subprocess.run(
        [sys.executable, "-m", "brisk.train", "--cfg", "job", "task=cifar", "whitening=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: resnet20" in proc.stdout and "CifarDataModule" in proc.stdout


def test_every_console_script_points_at_a_documented_callable() -> None:
    import importlib
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"train", "prepare-video", "classify-video", "export-video-model"} <= set(scripts)
    for name, target in scripts.items():
        module, attr = target.split(":")
        entry = getattr(importlib.import_module(module), attr)
        assert callable(entry) and entry.__doc__, name
