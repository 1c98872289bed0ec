"""The ``train`` command end to end, through subprocesses as a user runs it."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from tests.conftest import kill_and_resume, run_train, write_fake_cifar


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_digits_debug_run_writes_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_train("debug=fast", f"hydra.run.dir={run}")
    assert "final test acc1" in proc.stdout.strip().splitlines()[-1]
    for name in (
        "metrics.csv",
        "status.json",
        "train.log",
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    status = _status(run)
    assert status["status"] == "ok" and status["error"] is None and 0 <= status["test_acc1"] <= 1
    rows = _rows(run)
    assert list(rows[0])[:7] == ["step", "epoch", "split", "loss", "acc1", "lr", "seconds"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # plain types only
    assert ckpt["step"] == 4 and "task:" in ckpt["config_yaml"]


@pytest.mark.slow
def test_default_train_reaches_95_percent_on_digits(tmp_path: Path) -> None:
    proc = run_train(f"hydra.run.dir={tmp_path}")
    last = proc.stdout.strip().splitlines()[-1]
    assert "final test acc1" in last
    assert float(last.rsplit(" ", 1)[-1]) >= 0.95
    assert _status(tmp_path)["test_acc1"] >= 0.95


def test_eval_only_evaluates_a_checkpoint(tmp_path: Path) -> None:
    run_train("debug=fast", f"hydra.run.dir={tmp_path / 'a'}")
    run_train(
        "eval_only=true",
        f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'best.pt'}",
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    rows = _rows(tmp_path / "b")
    assert [r["split"] for r in rows] == ["val", "test"]
    assert not (tmp_path / "b" / "checkpoints").exists()
    status = _status(tmp_path / "b")
    assert status["status"] == "ok" and status["test_acc1"] == pytest.approx(
        float(rows[1]["acc1"]), abs=1e-5
    )


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    full, cut, resumed, killed = kill_and_resume(tmp_path)
    assert killed != 0  # SIGKILL mid-epoch 2 (18 steps per epoch), last checkpoint at step 25
    assert cut["step"] == 25
    assert resumed["step"] == full["step"] == 54
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # the resumed run's metrics continue the cut one without duplicated steps
    steps = [int(r["step"]) for r in _rows(tmp_path / "cut") if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 54


def test_resume_auto_finds_the_latest_run_of_the_same_config(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    run_train(
        "debug=fast",
        f"paths.output_dir={outputs}",
        "hydra.run.dir=" + str(outputs / "runs" / "first"),
    )
    proc = run_train(
        "debug=fast",
        "trainer.epochs=2",
        "resume=auto",
        f"paths.output_dir={outputs}",
        "hydra.run.dir=" + str(outputs / "runs" / "second"),
    )
    assert "no earlier run of this config" in proc.stdout  # epochs differ: another config
    proc = run_train(
        "debug=fast",
        "resume=auto",
        f"paths.output_dir={outputs}",
        "hydra.run.dir=" + str(outputs / "runs" / "third"),
    )
    assert f"continuing {outputs / 'runs' / 'first'}" in proc.stdout


def test_missing_dataset_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    proc = run_train(
        "task=cifar",
        f"paths.data_dir={tmp_path / 'nowhere'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode != 0
    assert (
        "cifar-10-batches-py" in proc.stderr
        and str(tmp_path / "nowhere") in proc.stderr
        and "how to get it" in proc.stderr
    )
    status = _status(tmp_path / "run")
    assert status["status"] == "failed" and "DatasetNotFoundError" in status["error"]


def test_cifar_task_smoke_on_a_tiny_fake_cifar(tmp_path: Path) -> None:
    data = write_fake_cifar(tmp_path / "data")
    run_train(
        "task=cifar",
        "debug=fast",
        f"paths.data_dir={data}",
        "dataset.val_size=20",
        "trainer.batch_size=16",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    status = _status(tmp_path / "run")
    assert status["status"] == "ok"
    assert status["selected_on"] == "val"


def test_validating_on_the_test_split_reports_the_last_checkpoint(tmp_path: Path) -> None:
    """With dataset.val_size=0 validation is the test set: best.pt would be chosen on it, so the
    reported test figure is the last epoch's, whatever the best validation was."""
    data = write_fake_cifar(tmp_path / "data")
    run_dir = tmp_path / "run"
    run_train(
        "task=cifar",
        "debug=fast",
        "trainer.epochs=3",
        f"paths.data_dir={data}",
        "dataset.val_size=0",
        "trainer.batch_size=16",
        "optimizer.lr=0.5",  # a noisy run, so the best and the last epochs differ in loss
        f"hydra.run.dir={run_dir}",
    )
    status = _status(run_dir)
    assert status["status"] == "ok" and status["selected_on"] == "last"
    rows = _rows(run_dir)
    last_val = [r for r in rows if r["split"] == "val"][-1]
    test = [r for r in rows if r["split"] == "test"][-1]
    assert float(test["loss"]) == pytest.approx(float(last_val["loss"]), rel=1e-6)


def test_imagenet_task_smoke_on_tiny_class_folders(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("n01", "n02"):
            folder = tmp_path / "data" / "imagenet" / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 36), color=(i * 60, 100 if c == "n01" else 0, 50)).save(
                    folder / f"{i}.JPEG"
                )
    run_train(
        "task=imagenet",
        "debug=fast",
        "model=resnet18",
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.batch_size=4",
        "trainer.num_workers=0",
        "dataset.image_size=32",
        "dataset.resize_size=36",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert _status(tmp_path / "run")["status"] == "ok"


def test_typo_fails_before_any_work(tmp_path: Path) -> None:
    proc = run_train("optimizer.lrr=0.1", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "lrr" in proc.stderr
    assert (
        "Did you mean 'optimizer.lr'?" in proc.stderr and "momentum" in proc.stderr
    )  # the valid keys
    assert not (tmp_path / "status.json").exists()


def test_installed_console_script_runs_from_another_directory(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).with_name("train")
    if not script.is_file():
        script = Path(shutil.which("train") or "")
    assert script.is_file(), "the `train` console script is not installed next to this Python"
    proc = subprocess.run(
        [str(script), "--cfg", "job", "task=cifar"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: resnet20" in proc.stdout


def test_loader_workers_start_method_is_a_knob_that_keeps_results(tmp_path: Path) -> None:
    common = ["debug=fast", "trainer.deterministic=true", "trainer.num_workers=1"]
    run_train(*common, "trainer.worker_start_method=spawn", f"hydra.run.dir={tmp_path / 's'}")
    run_train(*common, "trainer.worker_start_method=fork", f"hydra.run.dir={tmp_path / 'f'}")
    spawned = torch.load(tmp_path / "s" / "checkpoints" / "last.pt", weights_only=True)["model"]
    forked = torch.load(tmp_path / "f" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for (
        key,
        value,
    ) in forked.items():  # augmentation depends on (seed, epoch, index), not the worker
        assert torch.equal(value, spawned[key]), key
    bad = run_train(
        *common,
        "trainer.worker_start_method=thread",
        f"hydra.run.dir={tmp_path / 'b'}",
        check=False,
    )
    assert bad.returncode != 0 and "trainer.worker_start_method='thread'" in bad.stderr + bad.stdout
