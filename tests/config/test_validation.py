"""Every bad value fails before any work, naming its key, in one line without a traceback, exit 2.

One table drives three tests: composing each case in-process (the validator itself), every case
through the ``train`` CLI in one sweep (one process, one job per case: a failing job is recorded and
the sweep goes on), and a few cases as separate ``train`` runs in parallel (each exits with 2).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from tests.conftest import REPO_ROOT, write_fake_cifar

import brisk.config  # noqa: F401  (registers schemas and resolvers)
from brisk.config.validate import check_data, validate_config
from brisk.data.cifar import CifarDataModule
from brisk.errors import ConfigValueError, UserError

# fake CIFAR-10 of write_fake_cifar(per_class_train=20): 200 training images
FAKE_CIFAR_TRAIN = 200

# name -> (overrides, the key the message must name). Data-dependent cases load the fake CIFAR.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "batch_size_0": ({"trainer.batch_size": 0}, "trainer.batch_size"),
    "batch_size_neg": ({"trainer.batch_size": -5}, "trainer.batch_size"),
    "num_workers_neg": ({"trainer.num_workers": -1}, "trainer.num_workers"),
    "threads_neg": ({"trainer.threads": -1}, "trainer.threads"),
    "label_smoothing_2": ({"trainer.label_smoothing": 2.0}, "trainer.label_smoothing"),
    "lr_neg": ({"optimizer.lr": -0.1}, "optimizer.lr"),
    "lr_nan": ({"optimizer.lr": math.nan}, "optimizer.lr"),
    "width_0": ({"model.width": 0}, "model.width"),
    "image_size_0": ({"dataset.image_size": 0}, "dataset.image_size"),
    "log_every_0": ({"trainer.log_every": 0}, "trainer.log_every"),
    "val_every_0": ({"trainer.val_every": 0}, "trainer.val_every"),
    "eval_batch_size_neg": ({"trainer.eval_batch_size": -1}, "trainer.eval_batch_size"),
    "epochs_0": ({"trainer.epochs": 0}, "trainer.epochs"),
    "max_steps_neg": ({"trainer.max_steps": -1}, "trainer.max_steps"),
    "limit_train_neg": ({"trainer.limit_train_batches": -1}, "trainer.limit_train_batches"),
    "grad_clip_neg": ({"trainer.grad_clip": -1.0}, "trainer.grad_clip"),
    "momentum_2": ({"optimizer.momentum": 2.0}, "optimizer.momentum"),
    "scheduler_ratio_2": ({"scheduler.min_lr_ratio": 2.0}, "scheduler.min_lr_ratio"),
    "whitening_eps_neg": ({"whitening": "evd", "whitening.eps": -1.0}, "whitening.eps"),
    "cifar_val_size_neg": ({"task": "cifar", "dataset.val_size": -1}, "dataset.val_size"),
    "cifar_val_size_all": (
        {"task": "cifar", "dataset.val_size": FAKE_CIFAR_TRAIN},
        "dataset.val_size",
    ),
    "batch_over_data": (
        {"task": "cifar", "dataset.val_size": 20, "trainer.batch_size": 4096},
        "trainer.batch_size",
    ),
}
DATA_DEPENDENT = {"cifar_val_size_all", "batch_over_data"}
GROUPS = ("task", "whitening")


def _cli_overrides(overrides: dict[str, Any]) -> list[str]:
    return [
        f"{k}={'nan' if isinstance(v, float) and math.isnan(v) else v}"
        for k, v in overrides.items()
    ]


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module("brisk.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("data"), per_class_train=20)


@pytest.mark.parametrize("name", sorted(CASES))
def test_validator_names_the_key(name: str, fake_cifar: Path) -> None:
    overrides, key = CASES[name]
    cfg = _compose([*_cli_overrides(overrides), f"paths.data_dir={fake_cifar}"])
    with pytest.raises(ConfigValueError) as err:
        validate_config(cfg)
        if name in DATA_DEPENDENT:
            dm = CifarDataModule(str(fake_cifar), val_size=cfg.dataset.val_size)
            dm.setup()
            check_data(cfg, dm)
    message = str(err.value)
    assert key in message and "\n" not in message
    assert "checkpoint" not in message


def test_the_teachers_whitening_is_checked_like_the_students() -> None:
    for whitening in ("evd", "feature", "recursive"):
        overrides = ["task=video", "teacher=rgb_mfnet", f"whitening@teacher.whitening={whitening}"]
        validate_config(_compose(overrides))
        with pytest.raises(ConfigValueError, match="teacher.whitening.momentum"):
            validate_config(_compose([*overrides, "teacher.whitening.momentum=1.5"]))


def test_nesterov_needs_momentum_and_fractions_must_leave_training_data() -> None:
    with pytest.raises(ConfigValueError, match="optimizer.nesterov"):
        validate_config(_compose(["optimizer.momentum=0"]))
    with pytest.raises(ConfigValueError, match="dataset.val_fraction"):
        validate_config(_compose(["dataset.val_fraction=0.5", "dataset.test_fraction=0.5"]))


def test_names_are_checked_against_the_choices() -> None:
    with pytest.raises(ConfigValueError, match="model.name='resnet7'.*small_cnn"):
        validate_config(_compose(["model.name=resnet7"]))
    # a video data set's keys are checked by its settings dataclass, when it is built
    from brisk.run.setup import instantiate_checked

    with pytest.raises(ConfigValueError, match="dataset.normalization"):
        instantiate_checked(_compose(["task=video", "dataset.normalization=imagenet"]).dataset)
    with pytest.raises(ConfigValueError, match="trainer.worker_start_method"):
        validate_config(_compose(["trainer.worker_start_method=thread"]))


def test_precision_accepts_its_three_values_and_names_them_otherwise() -> None:
    for value in ("32", "bf16", "16-mixed"):
        cfg = _compose([f"trainer.precision={value}"])
        validate_config(cfg)
        assert cfg.trainer.precision == value
    with pytest.raises(ConfigValueError, match=r"trainer.precision='fp8' \(expected one of"):
        validate_config(_compose(["trainer.precision=fp8"]))


def test_each_schema_checks_its_own_keys_where_it_is_defined() -> None:
    from brisk.config.schema import MultiStepConfig, SGDConfig

    with pytest.raises(ConfigValueError, match="optimizer.lr=-1"):
        SGDConfig(lr=-1)
    with pytest.raises(ConfigValueError, match="nesterov=true needs"):
        SGDConfig(momentum=0.0)
    with pytest.raises(ConfigValueError, match=r"scheduler.milestones\[1\]=2"):
        MultiStepConfig(milestones=[0.5, 2])
    # every bad key of every group in one message
    with pytest.raises(ConfigValueError) as err:
        validate_config(_compose(["optimizer.lr=0", "trainer.epochs=0", "model.width=0"]))
    assert all(k in str(err.value) for k in ("optimizer.lr", "trainer.epochs", "model.width"))


# ------------------------------------------------------------------------------- CLI
def _env(full_error: bool = False) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "1" if full_error else "0",
    }


def _train(*args: str, full_error: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brisk.train", *args],
        cwd=REPO_ROOT,
        env=_env(full_error),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write_cases(folder: Path) -> None:
    """One config per case in a group ``case`` that a sweep can select: ``+case=a,b,...``."""
    for name, (overrides, _) in CASES.items():
        body: dict[str, Any] = {}
        defaults = [{f"override /{k}": v} for k, v in overrides.items() if k in GROUPS]
        for key, value in overrides.items():
            if key in GROUPS:
                continue
            node = body
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        text = "# @package _global_\n"
        if defaults:
            text += yaml.safe_dump({"defaults": defaults})
        (folder / "case").mkdir(parents=True, exist_ok=True)
        (folder / "case" / f"{name}.yaml").write_text(text + yaml.safe_dump(body))


@pytest.mark.slow
def test_every_bad_value_fails_through_the_cli_naming_its_key(
    tmp_path: Path, fake_cifar: Path
) -> None:
    """All cases in one sweep; each job fails before any work and the sweep runs every job."""
    _write_cases(tmp_path / "cases")
    sweep = tmp_path / "sweep"
    proc = _train(
        "-m",
        f"hydra.searchpath=[file://{tmp_path / 'cases'}]",
        f"+case={','.join(CASES)}",
        f"paths.data_dir={fake_cifar}",
        f"hydra.sweep.dir={sweep}",
        "+hydra.callbacks.sweep_summary.refresh_each_job=false",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
    assert len(errors) == len(CASES) + 1  # one per job, and Hydra's report of the first at the end
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        case = next(
            o.split("=", 1)[1]
            for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            if o.startswith("+case=")
        )
        key = CASES[case][1]
        status = yaml.safe_load((job / "status.json").read_text())
        assert status["status"] == "failed" and key in status["error"], (case, status["error"])
        assert "Traceback" in status["traceback"]  # kept for the user who wants it
        assert any(key in line for line in errors), case
        assert not (job / "metrics.csv").exists() and not (job / "checkpoints").exists(), case


@pytest.mark.slow
def test_single_runs_exit_2_with_one_line(tmp_path: Path, fake_cifar: Path) -> None:
    """A few cases as separate runs (in parallel): exit status 2, one stderr line, no traceback;
    with ``HYDRA_FULL_ERROR=1`` the traceback as well."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    runs = {
        "lr_nan": (["optimizer.lr=nan"], "optimizer.lr"),
        "val_size_all": (
            ["task=cifar", f"paths.data_dir={fake_cifar}", f"dataset.val_size={FAKE_CIFAR_TRAIN}"],
            "dataset.val_size",
        ),
        "empty_checkpoint": ([f"ckpt_path={empty}"], "empty file"),
        "missing_data": (["task=cifar", f"paths.data_dir={tmp_path / 'nowhere'}"], "how to get it"),
        "full_error": (["trainer.epochs=0"], "trainer.epochs"),
    }

    def run(name: str) -> tuple[str, subprocess.CompletedProcess]:
        args = [*runs[name][0], f"hydra.run.dir={tmp_path / name}"]
        return name, _train(*args, full_error=name == "full_error")

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, runs))
    for name, proc in results.items():
        expected = runs[name][1]
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
        assert len(errors) == 1 and expected in proc.stderr, (name, proc.stderr)
        assert ("Traceback" in proc.stderr) == (name == "full_error"), (name, proc.stderr)
        assert "checkpoint:" not in proc.stderr  # lr=nan no longer blames a missing checkpoint
        assert not (tmp_path / name / "checkpoints").exists(), name
        status = yaml.safe_load((tmp_path / name / "status.json").read_text())
        assert status["status"] == "failed" and "Traceback" in status["traceback"], name


def test_user_errors_are_one_family() -> None:
    from brisk.data.base import DatasetNotFoundError

    err = DatasetNotFoundError("cifar10", "/x", "files", "get them")
    assert isinstance(err, UserError) and isinstance(err, FileNotFoundError)
    import pickle

    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # launchers pickle failed jobs back
    assert issubclass(ConfigValueError, UserError)


def test_divergence_warning_threshold() -> None:
    from brisk.trainer.health import divergence_warning, nonfinite_loss_message

    assert divergence_warning(2.5, 10, 10) is None  # an untrained 10-class model
    assert divergence_warning(800.0, 10, 10) is None
    warning = divergence_warning(1e13, 10, 10)
    assert warning is not None and "optimizer.lr" in warning and "step 10" in warning
    assert divergence_warning(float("nan"), 10, 10) is None  # the NaN check reports that one
    assert "no checkpoint was written" in nonfinite_loss_message(math.nan, 3, Path("/nowhere.pt"))


@pytest.mark.slow
def test_a_run_diverging_to_a_huge_finite_loss_warns(tmp_path: Path) -> None:
    # BatchNorm keeps the loss finite at lr 1000: the NaN check never fires
    proc = _train(
        "optimizer.lr=1000", "debug=fast", "trainer.threads=1", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr
    assert "the run is diverging" in proc.stdout + proc.stderr
