"""The moving_shapes presets behind docs/video.md's results table compose, build and run.

The table is only reproducible if `train experiment=video_moving_shapes[_distill] ...` keeps meaning
the settings it was measured with, so the settings that matter are pinned here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tests.conftest import run_train

import brisk.config  # noqa: F401  (registers schemas and resolvers)
from brisk.teacher.base import NoTeacher


def _compose(overrides: list[str], hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_module("brisk.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def test_student_preset_pins_the_measured_workload() -> None:
    cfg = _compose(["experiment=video_moving_shapes", "paths.data_dir=/data"])
    assert cfg.task.name == "video" and cfg.task.monitor == "video_acc1"
    assert cfg.model.name == "mfcd_net" and cfg.model.width_mult == 0.25
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer.lr) == (12, 16, 0.05)
    # 30 test videos per class (240): a test accuracy near 0.9 has a standard error of 0.019
    assert cfg.dataset.train_per_class == 48 and cfg.dataset.test_per_class == 30
    # the workload is task=video's default too, so both share one generated set
    default = _compose(["task=video", "paths.data_dir=/data"])
    assert default.dataset.train_per_class == 48 and default.trainer.epochs == 12
    assert cfg.dataset.root == default.dataset.root
    model = instantiate(cfg.model, num_classes=8)
    params = sum(p.numel() for p in model.parameters())
    assert 0.45e6 < params < 0.55e6  # the 0.50 M student of the table


@pytest.mark.parametrize("whitening", ["none", "recursive", "evd"])
def test_student_preset_has_no_teacher_and_takes_any_whitening(whitening: str) -> None:
    cfg = _compose(["experiment=video_moving_shapes", f"whitening={whitening}"])
    assert isinstance(instantiate(cfg.teacher), NoTeacher)  # no teacher keys leak into NoTeacher
    instantiate(cfg.whitening)


@pytest.mark.parametrize(
    "teacher,target", [(None, "RGBMFNetTeacher"), ("rgb_i3d", "RGBI3DTeacher")]
)
def test_distill_preset_narrows_whichever_teacher(teacher: str | None, target: str) -> None:
    overrides = ["experiment=video_moving_shapes_distill"]
    overrides += [f"teacher={teacher}"] if teacher else []
    cfg = _compose(overrides)
    assert cfg.teacher._target_.endswith(target)
    assert cfg.teacher.width_mult == 0.25 and cfg.teacher.checkpoint is None
    # the measured recipe: stage 1 whitened for 24 epochs, the student starts from the teacher ...
    assert cfg.teacher.epochs == 24 and cfg.teacher.init_student is True
    assert cfg.teacher.whitening._target_.endswith("RecursiveWhitening")
    assert cfg.whitening._target_.endswith("NoWhitening")  # ... and is not whitened itself
    student = _compose(["experiment=video_moving_shapes"])
    for key in ("model", "dataset", "trainer", "optimizer"):
        assert OmegaConf.to_container(cfg[key]) == OmegaConf.to_container(student[key]), key


@pytest.mark.slow
def test_distill_preset_runs_both_stages(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_train(
        "experiment=video_moving_shapes_distill",
        "debug=fast",
        "dataset.train_per_class=3",  # 1 held out for validation: 16 training videos, one batch
        "dataset.test_per_class=1",
        "dataset.num_workers=0",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run_dir}",
        "trainer.threads=1",
    )
    teacher = json.loads((run_dir / "teacher" / "status.json").read_text())
    student = json.loads((run_dir / "status.json").read_text())
    assert teacher["status"] == "ok" and student["status"] == "ok"
    assert (tmp_path / "data" / "moving_shapes").is_dir()
    cost = student["cost"]
    assert cost["cost/teacher/params_m"] > 0 and 0.45 < cost["cost/student/params_m"] < 0.55


@pytest.mark.parametrize("sweep", ["video_moving_shapes", "video_moving_shapes_whitening"])
def test_sweep_presets_expand_to_jobs_that_compose(sweep: str) -> None:
    cfg = _compose([f"sweep={sweep}"], hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params["seed"] == ["0", "1", "2"]
    jobs = [[]]
    for key, values in params.items():
        jobs = [job + [f"{key}={v}"] for job in jobs for v in values]
    for job in jobs:
        job_cfg = _compose(job)
        assert job_cfg.model.width_mult == 0.25, job
        instantiate(job_cfg.teacher)
        instantiate(job_cfg.whitening)
