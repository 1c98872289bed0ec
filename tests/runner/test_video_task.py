"""``train task=video``: both stages of teacher-student training through the CLI on
moving_shapes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tests.conftest import run_train

# 16 videos per class (the default is 48): these tests check the wiring, not the accuracy
TINY = [
    "debug=fast",
    "model.width_mult=0.25",
    "trainer.batch_size=8",
    "dataset.train_per_class=16",
    "dataset.test_per_class=6",
]


@pytest.fixture(scope="module")
def video_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_data")


@pytest.mark.slow
def test_teacher_stage_then_student_and_resume_skips_the_teacher(
    video_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = [
        "task=video",
        "teacher=rgb_i3d",
        "teacher.width_mult=0.25",
        "teacher.beta=0.1",
        # feature mimicking through an adapter the student trains
        "teacher.layers={conv5: Mixed_5c}",
        *TINY,
        f"paths.data_dir={video_data}",
        f"hydra.run.dir={run}",
    ]
    proc = run_train(*args)
    assert "stage 'teacher': training on 'rgb'" in proc.stdout
    assert (run / "teacher" / "done").is_file() and (
        run / "teacher" / "checkpoints" / "best.pt"
    ).is_file()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "ok" and 0 <= status["test_video_acc1"] <= 1
    # the cost of student and teacher per clip and per video, counted at the start of the run
    assert status["cost"]["cost/student/params_m"] < status["cost"]["cost/teacher/params_m"]
    assert status["cost"]["cost/student/clips_per_video"] >= 1
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"][-1]
    assert 0 <= float(test["video_acc1"]) <= 1 and float(test["videos"]) > 0
    train_rows = [r for r in rows if r["split"] == "train"]
    assert any(r.get("distill/kl") for r in train_rows) and any(
        r.get("distill/feat") for r in train_rows
    )
    assert (
        "adapters are unchanged" not in proc.stdout + proc.stderr
    )  # the optimizer trains the adapters
    teacher_rows = (run / "teacher" / "metrics.csv").read_text()
    teacher_status = json.loads((run / "teacher" / "status.json").read_text())
    teacher_best = teacher_status["best_val_video_acc1"]
    # the teacher's own test figure (kept weights chosen on validation), also in the run's record
    assert 0 <= teacher_status["test_video_acc1"] <= 1
    assert status["teacher"] == {
        k: teacher_status[k] for k in ("best_val_video_acc1", "test_video_acc1")
    }
    warned = "ended near chance" in proc.stdout + proc.stderr
    assert warned == (teacher_best < 1.5 / 8)  # 8 classes: a useless teacher is called out

    again = run_train(*args, "resume=auto")
    assert (
        "stage 'teacher' finished earlier" in again.stdout
        and "stage 'teacher': training" not in again.stdout
    )
    assert (run / "teacher" / "metrics.csv").read_text() == teacher_rows


@pytest.mark.slow
def test_student_alone_with_recursive_whitening_on_conv3d(video_data: Path, tmp_path: Path) -> None:
    run_train(
        "task=video",
        "whitening=recursive",
        *TINY,
        f"paths.data_dir={video_data}",
        f"hydra.run.dir={tmp_path}",
    )
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "ok"
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "whiten/" in header  # per-layer statistics of the Conv3d layers were logged


@pytest.mark.slow
def test_teacher_stage_has_its_own_whitening(video_data: Path, tmp_path: Path) -> None:
    run_train(
        "task=video",
        "teacher=rgb_mfnet",
        "teacher.width_mult=0.25",
        "whitening@teacher.whitening=recursive",
        *TINY,
        f"paths.data_dir={video_data}",
        f"hydra.run.dir={tmp_path}",
    )
    teacher_header = (tmp_path / "teacher" / "metrics.csv").read_text().splitlines()[0]
    student_header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "whiten/" in teacher_header  # stage 1 was preconditioned ...
    assert "whiten/" not in student_header  # ... and the student, with whitening=none, was not


@pytest.mark.slow
def test_a_video_run_records_per_class_results_and_its_speed(
    video_data: Path, tmp_path: Path
) -> None:
    run_train(
        "task=video",
        *TINY,
        "trainer.limit_eval_batches=null",  # the whole test protocol, as the speed is quoted
        f"paths.data_dir={video_data}",
        f"hydra.run.dir={tmp_path}",
    )
    status = json.loads((tmp_path / "status.json").read_text())
    # the video figure is named as one; the clip figure stays in "test" under its own name
    assert status["monitor"] == "video_acc1" and "test_acc1" not in status
    assert status["test_video_acc1"] == status["test"]["video_acc1"]
    assert 0 <= status["best_val_video_acc1"] <= 1 and "best_val_acc1" not in status
    assert "acc5" in status["test"] and "video_acc5" in status["test"]  # 8 classes > 5
    speed = status["inference"]
    assert speed["videos"] == status["test_videos"] == status["test"]["videos"]
    assert speed["clips"] == status["test_clips_evaluated"]
    assert speed["clips_per_s"] > 0 and speed["ms_per_video"] > 0
    assert speed["end_to_end_ms_per_video"] >= speed["ms_per_video"]
    with (tmp_path / "test_per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows][:2] == ["move_right", "move_left"] and len(rows) == 8
    assert sum(int(r["count"]) for r in rows) == speed["videos"]
    accuracies = [int(r["correct"]) / int(r["count"]) for r in rows]
    assert abs(sum(accuracies) / 8 - status["test"]["video_mean_class_acc1"]) < 1e-6
    with (tmp_path / "test_confusion.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0][1:] == [r["name"] for r in rows]
    counts = [[int(x) for x in row[1:]] for row in table[1:]]
    assert [counts[i][i] for i in range(8)] == [int(r["correct"]) for r in rows]
    assert sum(map(sum, counts)) == speed["videos"]


@pytest.mark.slow
def test_teacher_stage_refuses_another_config_on_resume(video_data: Path, tmp_path: Path) -> None:
    """Stopped in stage 1, the run continues only with the config its teacher was fitted with."""
    run = tmp_path / "run"
    args = [
        "task=video",
        "teacher=rgb_i3d",
        *TINY,
        "trainer.checkpoint_every=2",
        f"paths.data_dir={video_data}",
        f"hydra.run.dir={run}",
    ]
    killed = run_train(*args, env={"BRISK_FAULT_AT_STEP": "3"}, check=False)
    assert killed.returncode != 0
    assert (run / "teacher" / "checkpoints" / "last.pt").is_file()
    assert not (run / "teacher" / "done").is_file()

    as_a_user = {"HYDRA_FULL_ERROR": "0"}  # the one-line error a user sees, no traceback
    refused = run_train(*args, "teacher.dropout=0.1", env=as_a_user, check=False)
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("brisk: error:")]
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert "stage 'teacher'" in lines[0] and "teacher.dropout: 0.0 -> 0.1" in lines[0]
    assert "resume_strict=false" in lines[0]

    narrower = run_train(*args, "teacher.width_mult=0.125", env=as_a_user, check=False)
    assert narrower.returncode == 2 and "teacher.width_mult: 0.25 -> 0.125" in narrower.stderr
    # resume_strict=false cannot load a teacher of another shape: one line, no traceback
    reshaped = run_train(
        *args, "teacher.width_mult=0.125", "resume_strict=false", env=as_a_user, check=False
    )
    assert reshaped.returncode == 2 and "Traceback" not in reshaped.stderr
    assert "cannot continue" in reshaped.stderr

    applied = run_train(*args, "teacher.dropout=0.1", "resume_strict=false")
    assert "continuing stage 'teacher'" in applied.stdout + applied.stderr
    assert (run / "teacher" / "done").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_teacher_stage_continues_from_best_when_last_is_unreadable(
    video_data: Path, tmp_path: Path
) -> None:
    """A kill that leaves stage 1's last.pt unreadable loses only the steps after its best.pt."""
    run = tmp_path / "run"
    args = [
        "task=video",
        "teacher=rgb_i3d",
        *TINY,
        "teacher.epochs=2",
        "trainer.checkpoint_every=2",
        f"paths.data_dir={video_data}",
        f"hydra.run.dir={run}",
    ]
    killed = run_train(*args, env={"BRISK_FAULT_AT_STEP": "6"}, check=False)
    assert killed.returncode != 0
    ckpts = run / "teacher" / "checkpoints"
    assert (ckpts / "best.pt").is_file() and not (run / "teacher" / "done").is_file()
    (ckpts / "last.pt").unlink()  # a new file, as a rename would leave it: best.pt is kept
    (ckpts / "last.pt").write_bytes(b"cut off")
    resumed = run_train(*args)
    out = resumed.stdout + resumed.stderr
    assert "continuing from" in out and "best.pt at step 4" in out
    assert (run / "teacher" / "done").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_fitting_the_teacher_in_the_run_leaves_the_students_training_unchanged(
    video_data: Path, tmp_path: Path
) -> None:
    """Stage 1 keeps its random draws to itself: the student trained after it equals the student
    of a run given that teacher's checkpoint, seed for seed."""
    common = ["task=video", "teacher=rgb_i3d", *TINY, "teacher.epochs=1"]
    common.append(f"paths.data_dir={video_data}")
    run_train(*common, f"hydra.run.dir={tmp_path / 'fitted'}")
    teacher = tmp_path / "fitted" / "teacher" / "checkpoints" / "best.pt"
    run_train(*common, f"teacher.checkpoint={teacher}", f"hydra.run.dir={tmp_path / 'given'}")
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)["model"]
        for run in ("fitted", "given")
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
