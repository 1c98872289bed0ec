"""The optional-extra launcher/sweeper configs and the video sweep preset compose as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException

import brisk.config  # noqa: F401  (registers the schemas the root config lists)
from brisk.sweep import extras
from brisk.sweep.extras import (
    JOBLIB,
    OPTUNA,
    PLUGIN_OPTIONS,
    SLURM,
    MissingExtraError,
    check_plugin_overrides,
    missing_modules,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
EXTRA_CONFIGS = sorted((CONF / "hydra" / "launcher").glob("*.yaml")) + sorted(
    (CONF / "hparams_search").glob("*.yaml")
)


def compose_root(*overrides: str):
    with initialize_config_module("brisk.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("path", EXTRA_CONFIGS + [CONF / "sweep" / "video_teacher.yaml"], ids=str)
def test_configs_are_valid_yaml_mappings(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("path", EXTRA_CONFIGS, ids=lambda p: p.stem)
def test_every_plugin_config_has_an_install_hint(path: Path) -> None:
    group = "hydra/launcher" if path.parent.name == "launcher" else "hparams_search"
    assert (group, path.stem) in PLUGIN_OPTIONS


CASES = [
    # override, extra, what Hydra cannot find without the plugin, a check when it is installed
    (
        "hydra/launcher=slurm",
        SLURM,
        "hydra/launcher/submitit_slurm",
        lambda c: (
            c.hydra.launcher._target_.endswith("SlurmLauncher")
            and (
                c.hydra.launcher.nodes,
                c.hydra.launcher.gpus_per_node,
                c.hydra.launcher.timeout_min,
            )
            == (1, 1, 720)
        ),
    ),
    (
        "hydra/launcher=parallel",
        JOBLIB,
        "hydra/launcher/joblib",
        lambda c: (
            c.hydra.launcher._target_.endswith("JoblibLauncher") and c.hydra.launcher.n_jobs == 2
        ),
    ),
    (
        "+hparams_search=optuna",
        OPTUNA,
        "hydra/sweeper/optuna",
        lambda c: (
            c.hydra.sweeper._target_.endswith("OptunaSweeper")
            and c.hydra.sweeper.direction == "maximize"
            and c.hydra.sweeper.params["optimizer.lr"] == "tag(log, interval(0.01, 0.5))"
        ),
    ),
]


@pytest.mark.parametrize(
    ("override", "extra", "missing_config", "check"), CASES, ids=[c[0] for c in CASES]
)
def test_plugin_configs_compose_or_fail_clearly(override, extra, missing_config, check) -> None:
    if missing_modules(extra):
        with pytest.raises(
            MissingConfigException, match=f"Could not (load|find) '{missing_config}'"
        ):
            compose_root(override)
        with pytest.raises(MissingExtraError, match=rf'pip install -e "\.\[{extra.name}\]"'):
            check_plugin_overrides(["-m", override, "seed=0,1"])
    else:
        assert check(compose_root(override))
        check_plugin_overrides(["-m", override])


def test_check_plugin_overrides_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = set()
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    check_plugin_overrides(["optimizer.lr=0.1", "-m", "hydra/launcher=basic", "seed=0,1"])
    with pytest.raises(MissingExtraError) as info:
        check_plugin_overrides(["hydra/launcher=slurm"])
    message = str(info.value)
    assert "'hydra/launcher=slurm' needs the 'slurm' extra (hydra-submitit-launcher)" in message
    assert "hydra_plugins.hydra_submitit_launcher, submitit cannot be imported" in message
    assert 'pip install "brisk[slurm]"' in message
    with pytest.raises(MissingExtraError, match="'optuna' extra"):
        check_plugin_overrides(["+hparams_search=optuna"])
    with pytest.raises(MissingExtraError, match="'joblib' extra"):
        check_plugin_overrides(["hydra/launcher=joblib"])
    installed.update({"hydra_plugins.hydra_submitit_launcher", "submitit"})
    check_plugin_overrides(["hydra/launcher=slurm"])
    installed.add("hydra_plugins.hydra_optuna_sweeper")
    with pytest.raises(MissingExtraError, match="optuna cannot be imported"):
        check_plugin_overrides(["hydra/sweeper=optuna"])


def test_video_teacher_preset_is_a_multirun_over_teachers_and_seeds() -> None:
    cfg = compose_root("sweep=video_teacher")
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"task": "video", "teacher": "none,rgb_i3d", "seed": "0,1,2"}
    for option in params["teacher"].split(","):
        assert (CONF / "teacher" / f"{option}.yaml").is_file(), option
    if not (CONF / "task" / "video.yaml").is_file():
        pytest.skip("conf/task/video.yaml is not in the config tree yet")


def test_train_prints_the_install_command_after_hydras_error(tmp_path: Path) -> None:
    if not missing_modules(JOBLIB):
        pytest.skip("hydra-joblib-launcher is installed: nothing is missing")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brisk.train",
            "-m",
            "hydra/launcher=parallel",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "Could not load 'hydra/launcher/joblib'" in done.stderr
    assert "brisk: 'hydra/launcher=parallel' needs the 'joblib' extra" in done.stderr
    assert 'pip install -e ".[joblib]"' in done.stderr
    assert not (tmp_path / "sweep").exists()  # nothing ran
