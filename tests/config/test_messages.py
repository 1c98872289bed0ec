"""What a user sees of the config tree: `train --help`, and one line for a command that does not
compose (exit status 2), with the valid keys or options and the closest one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException

import brisk.config  # noqa: F401  (registers schemas and resolvers)
from brisk.config.diagnose import composition_error

REPO_ROOT = Path(__file__).resolve().parents[2]
HIDDEN = ("base_", "schema_", "_target_", "_partial_")


def _train(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``train ARGS`` as a user runs it (no HYDRA_FULL_ERROR)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "brisk.train", *args],
        cwd=cwd or REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_only_what_a_user_can_pick() -> None:
    proc = _train("task=cifar", "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for hidden in HIDDEN:
        assert hidden not in text, hidden
    assert "optimizer: adamw, muon, sgd\n" in text
    assert "whitening: evd, feature, none, recursive\n" in text
    assert "trainer: default\n" in text and "paths: default\n" in text
    assert "epochs: 160" in text  # the config of the command line, task=cifar's
    assert "name: ${task.name}" in text  # unresolved, as Hydra shows it


def test_hydras_own_list_of_options_has_no_schemas() -> None:
    GlobalHydra.instance().clear()
    with (
        initialize_config_module("brisk.conf", version_base="1.3"),
        pytest.raises(MissingConfigException) as err,
    ):
        compose("config", overrides=["optimizer=foo"])
    assert sorted(err.value.options or []) == ["adamw", "muon", "sgd"]


def test_schemas_still_type_every_option() -> None:
    assert composition_error(["optimizer=muon", "optimizer.aux=rmsprop"]) is not None
    assert composition_error(["scheduler=multistep", "scheduler.gama=0.2"]) is not None
    message = composition_error(["whitening=recursive", "whitening.epss=0.1"])
    assert message is not None and message.startswith(
        "unknown key 'whitening.epss'. Did you mean 'whitening.eps'?"
    )


@pytest.mark.parametrize(
    "argv,expected",
    [
        (
            ["optimizer.lrr=0.1"],
            "unknown key 'optimizer.lrr'. Did you mean 'optimizer.lr'? Valid keys under "
            "'optimizer': dampening, lr, momentum, nesterov, weight_decay",
        ),
        (
            ["model=resnet21"],
            "unknown option 'model=resnet21'. Did you mean 'model=resnet20'? Valid options for "
            "'model': coviar, i3d, mfcd_net, mfnet_rgb, resnet110, resnet18, resnet20, resnet32, "
            "resnet44, resnet50, resnet56, small_cnn",
        ),
        (["epochs=3"], "unknown key 'epochs'. Did you mean 'trainer.epochs'?"),
        (["optimzer.lr=0.1"], "unknown key 'optimzer.lr'"),
        (
            ["trainer.epochs=ten"],
            "trainer.epochs=ten: Value 'ten' of type 'str' could not be converted to Integer",
        ),
        (["trainer.device=gpu"], "expected one of [auto, cpu, cuda]"),
        (["seed=0,1"], "'seed=0,1' lists several values: add -m"),
        (["-m", "teacher=none,rgb_i3dd"], "Did you mean 'teacher=rgb_i3d'?"),
        (["foo=[1"], "cannot parse 'foo=[1'"),
    ],
)
def test_a_command_that_does_not_compose_gets_one_line(argv: list[str], expected: str) -> None:
    message = composition_error(argv)
    assert message is not None and expected in message, message
    assert "\n" not in message and "_target_" not in message and "+optimizer" not in message


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["task=cifar", "optimizer.lr=0.2", "whitening=recursive"],
        ["-m", "seed=0,1", "teacher=none,rgb_i3d"],
        ["-m", "model=glob(resnet2*)", "seed=range(0,3)"],
        ["sweep=whitening_cifar10", "seed=0,1"],  # the preset makes it a multirun
        ["hydra.run.dir=/tmp/x", "--cfg", "job"],
    ],
)
def test_a_command_that_composes_passes(argv: list[str]) -> None:
    assert composition_error(argv) is None


def test_train_reports_composition_errors_in_one_line_with_status_2(tmp_path: Path) -> None:
    for argv, expected in (
        (["optimizer.lrr=0.1"], "Did you mean 'optimizer.lr'?"),
        (["model=resnet21"], "Did you mean 'model=resnet20'?"),
    ):
        proc = _train(*argv, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("brisk: error: "), proc.stderr
        assert expected in lines[0]
        for hydra_text in ("To append", "+optimizer", "Config search path", "HYDRA_FULL_ERROR"):
            assert hydra_text not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing ran
