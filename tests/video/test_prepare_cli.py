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
    # a cached clip cut off (a full disk, a killed copy) is found and extracted again
    clip = next(manifest.parent.glob("clips/train/*/*.rgb.npy"))
    size = clip.stat().st_size
    clip.write_bytes(clip.read_bytes()[: size // 2])
    repaired = run(args, tmp_path)
    assert repaired.returncode == 0
    assert "1 prepared now, 15 already cached" in repaired.stdout + repaired.stderr
    assert "cache entry damaged" in repaired.stdout + repaired.stderr
    assert clip.stat().st_size == size


@pytest.mark.slow
def test_installed_prepare_video_reports_a_missing_data_set(tmp_path):
    script = Path(sys.executable).parent / "prepare-video"
    if not script.exists():
        pytest.skip("brisk is not installed with its console scripts in this environment")
    proc = run([str(script), "dataset=ucf101"], tmp_path)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert str(tmp_path / "data" / "ucf101") in out and "classInd.txt" in out


def _users_folder(tmp_path: Path) -> Path:
    """A data set root whose videos/ holds a user's own clip, and no moving_shapes marker."""
    root = tmp_path / "mine"
    (root / "videos" / "c").mkdir(parents=True)
    (root / "videos" / "c" / "clip.avi").write_bytes(b"the user's own video")
    return root


def _assert_refused(proc: subprocess.CompletedProcess, root: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
    assert len(errors) == 1 and "generated.json" in errors[0] and "Traceback" not in proc.stderr
    assert (root / "videos" / "c" / "clip.avi").read_bytes() == b"the user's own video"
    assert not (root / "videos" / "train").exists()


def test_prepare_video_refuses_a_folder_it_did_not_generate(tmp_path):
    root = _users_folder(tmp_path)
    args = [sys.executable, "-m", "brisk.video.prepare", "task=video", f"dataset.root={root}"]
    _assert_refused(run(args, tmp_path), root)


def test_train_refuses_a_folder_it_did_not_generate(tmp_path):
    from tests.conftest import run_train

    root = _users_folder(tmp_path)
    proc = run_train(
        "task=video",
        f"dataset.root={root}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"HYDRA_FULL_ERROR": "0"},  # as users run it: the one line, no traceback
        check=False,
    )
    _assert_refused(proc, root)


def test_an_interrupted_generation_is_redone(tmp_path):
    from brisk.video import synthetic

    root = tmp_path / "shapes"
    counts = {"train": 1, "test": 1}
    videos = synthetic.generate(root, counts, frames=4, size=16)
    first = sorted(p.relative_to(videos) for p in videos.rglob("*.avi"))
    # cut off mid-way: the marker says "generating", one video is missing
    (root / synthetic.MARKER).write_text('{"generating": {}}')
    next(videos.rglob("*.avi")).unlink()
    synthetic.generate(root, counts, frames=4, size=16)
    assert sorted(p.relative_to(videos) for p in videos.rglob("*.avi")) == first
