"""The ``prepare-video`` command with the runner's Hydra overrides, run as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


@pytest.mark.slow
def test_prepare_video_builds_the_cache_and_is_resumable(tmp_path):
    args = [
        sys.executable,
        "-m",
        "brisk.video.prepare",
        "dataset=moving_shapes",
        "dataset.train_per_class=1",
        "dataset.test_per_class=1",
        "dataset.num_workers=2",
    ]
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr
    manifest = (
        tmp_path / "data" / "cache" / "moving_shapes" / "mpeg4_64x64_gop12_q1" / "manifest.json"
    )
    assert json.loads(manifest.read_text())["videos_ok"] == 16
    again = run(args, tmp_path)
    assert again.returncode == 0
    assert "0 prepared now, 16 already cached" in again.stdout + again.stderr


@pytest.mark.slow
def test_installed_prepare_video_reports_a_missing_data_set(tmp_path):
    script = Path(sys.executable).parent / "prepare-video"
    if not script.exists():
        pytest.skip("brisk is not installed with its console scripts in this environment")
    proc = run([str(script), "dataset=ucf101"], tmp_path)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert str(tmp_path / "data" / "ucf101") in out and "classInd.txt" in out
