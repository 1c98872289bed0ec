"""``classify-video`` and ``export-video-model`` on a video run's checkpoint, as users run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tests.conftest import compose_config

from brisk.run.resume import identity_yaml
from brisk.video.codec import write_video
from brisk.video.inference import classify, load_trained, top_classes
from brisk.video.synthetic import CLASSES, render_video

SMALL = ["dataset.resolution=[32,32]", "dataset.crop_size=28", "model.width_mult=0.25"]


def fake_run(tmp_path: Path, *overrides: str, seed: int = 0) -> Path:
    """A video run's directory as ``train`` leaves it: checkpoints/best.pt and status.json."""
    cfg = compose_config("task=video", f"paths.data_dir={tmp_path / 'data'}", *SMALL, *overrides)
    torch.manual_seed(seed)
    model = instantiate(cfg.model, num_classes=len(CLASSES))
    run = tmp_path / f"run{seed}"
    (run / "checkpoints").mkdir(parents=True)
    state = {"config_yaml": identity_yaml(cfg), "model": model.state_dict()}
    torch.save(state, run / "checkpoints" / "best.pt")
    (run / "status.json").write_text(json.dumps({"status": "ok", "classes": list(CLASSES)}))
    return run / "checkpoints" / "best.pt"


def a_video(tmp_path: Path, cls: int = 2, frames: int = 30) -> Path:
    path = tmp_path / f"clip{cls}.avi"
    write_video(path, render_video(cls, 7, frames=frames, size=32), gop_size=30)
    return path


def command(module_main: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brisk.video.inference", module_main, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_classify_video_prints_the_top_5_of_the_test_protocol(tmp_path: Path) -> None:
    ckpt = fake_run(tmp_path)
    video = a_video(tmp_path)
    proc = command("classify", video, ckpt, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{video}: top-5 of 8 classes" and len(lines) == 6
    printed = [(line.split(". ", 1)[1].rsplit(": ", 1)) for line in lines[1:]]
    names, probs = [n for n, _ in printed], [float(p) for _, p in printed]
    assert set(names) <= set(CLASSES) and probs == sorted(probs, reverse=True)
    # the same figures as the API: the mean softmax over the clips of every usable GOP
    trained = load_trained(ckpt)
    expected = top_classes(classify(trained, video), trained.classes)
    assert names == [n for n, _ in expected]
    assert probs == pytest.approx([p for _, p in expected], abs=1e-4)


def test_classify_follows_the_runs_protocol_and_weights(tmp_path: Path) -> None:
    video = a_video(tmp_path, frames=36)
    one = classify(load_trained(fake_run(tmp_path, seed=0)), video)
    assert one.shape == (8,) and float(one.sum()) == pytest.approx(1.0, abs=1e-5)
    other = classify(load_trained(fake_run(tmp_path, seed=1)), video)
    assert not torch.allclose(one, other)  # the weights are the checkpoint's, not fresh ones
    # 10 crops of one GOP are another protocol, and another score
    ten = classify(load_trained(fake_run(tmp_path, "dataset.test_crops=10", seed=2)), video)
    same_weights = classify(load_trained(fake_run(tmp_path / "b", seed=2)), video)
    assert not torch.allclose(ten, same_weights)


def test_classify_video_errors_are_one_line(tmp_path: Path) -> None:
    ckpt = fake_run(tmp_path)
    for args, says in [
        ((tmp_path / "absent.avi", ckpt), "no such video file"),
        ((ckpt, ckpt), "could not be read as a video"),
        ((a_video(tmp_path), tmp_path / "absent.pt"), "no such checkpoint"),
    ]:
        proc = command("classify", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("brisk: error:") and says in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["mfcd_net", "i3d"])
@pytest.mark.parametrize("suffix", [".pt", pytest.param(".onnx", marks=pytest.mark.slow)])
def test_exported_networks_give_the_eager_logits(tmp_path: Path, name: str, suffix: str) -> None:
    from brisk.models import create_model
    from brisk.models.export import export_model, run_exported

    if suffix == ".onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(name, num_classes=8, width_mult=0.25).eval()
    clip = (3, 12, 32, 32)
    path = export_model(model, torch.randn(2, *clip), tmp_path / f"{name}{suffix}")
    clips = torch.randn(3, *clip)  # another batch size than the trace's
    with torch.no_grad():
        eager = model(clips)
    exported = run_exported(path, clips)
    assert exported.shape == (3, 8) and not torch.allclose(exported[0], exported[1])
    torch.testing.assert_close(exported, eager, atol=1e-4, rtol=1e-4)


def test_export_video_model_writes_and_checks_the_file(tmp_path: Path) -> None:
    ckpt = fake_run(tmp_path)
    out = tmp_path / "student.pt"
    proc = command("export", ckpt, out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "clips (3, 12, 28, 28) (C, T, H, W) -> 8 logits" in proc.stdout
    diff = float(proc.stdout.rsplit(" ", 1)[1])
    assert diff < 1e-4 and out.is_file()
    bad = command("export", ckpt, tmp_path / "student.txt", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a .pt or .ts" in bad.stderr
