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
from brisk.config import extras
from brisk.config.extras import (
    JOBLIB,
    OPTUNA,
    PLUGIN_OPTIONS,
    SLURM,
    missing_extra_messages,
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
            c.hydra.launcher._target_.endswith("BriskParallelLauncher")
            and c.hydra.launcher.n_jobs == 2
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
        (message,) = missing_extra_messages(["-m", override, "seed=0,1"])
        assert f'pip install -e ".[{extra.name}]"' in message
    else:
        assert check(compose_root(override))
        assert missing_extra_messages(["-m", override]) == []


def test_missing_extra_messages_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = set()
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    assert missing_extra_messages(["optimizer.lr=0.1", "-m", "hydra/launcher=basic"]) == []
    (message,) = missing_extra_messages(["hydra/launcher=slurm"])
    assert "'hydra/launcher=slurm' needs the 'slurm' extra (hydra-submitit-launcher)" in message
    assert "hydra_plugins.hydra_submitit_launcher, submitit cannot be imported" in message
    assert 'pip install "brisk[slurm]"' in message
    assert "'optuna' extra" in missing_extra_messages(["+hparams_search=optuna"])[0]
    assert "'joblib' extra" in missing_extra_messages(["hydra/launcher=joblib"])[0]
    installed.update({"hydra_plugins.hydra_submitit_launcher", "submitit"})
    assert missing_extra_messages(["hydra/launcher=slurm"]) == []
    installed.add("hydra_plugins.hydra_optuna_sweeper")
    assert "optuna cannot be imported" in missing_extra_messages(["hydra/sweeper=optuna"])[0]


def test_video_teacher_preset_is_a_multirun_over_teachers_and_seeds() -> None:
    cfg = compose_root("sweep=video_teacher")
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"task": "video", "teacher": "none,rgb_i3d", "seed": "0,1,2"}
    for option in params["teacher"].split(","):
        assert (CONF / "teacher" / f"{option}.yaml").is_file(), option
    if not (CONF / "task" / "video.yaml").is_file():
        pytest.skip("conf/task/video.yaml is not in the config tree yet")


def test_train_prints_the_install_command_instead_of_hydras_error(tmp_path: Path) -> None:
    # the test extras install hydra-joblib-launcher: hide it, as on a machine without the extra
    hide_and_run = (
        "import runpy, sys; sys.modules['hydra_plugins.hydra_joblib_launcher'] = None; "
        "runpy.run_module('brisk.train', run_name='__main__')"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            hide_and_run,
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
    assert done.returncode == 2, done.stderr  # brisk's one line instead of Hydra's error
    assert "Could not load" not in done.stderr
    assert "brisk: error: 'hydra/launcher=parallel' needs the 'joblib' extra" in done.stderr
    assert 'pip install -e ".[joblib]"' in done.stderr
    assert not (tmp_path / "sweep").exists()  # nothing ran


CIFAR10_FULL_ARMS = {
    # experiment: (optimizer target, learning rate, whitening target)
    "cifar10_full_sgd": ("torch.optim.SGD", 0.1, "brisk.whitening.NoWhitening"),
    "cifar10_full_evd": ("torch.optim.SGD", 0.2, "brisk.whitening.EVDWhitening"),
    "cifar10_full_recursive": ("torch.optim.SGD", 0.2, "brisk.whitening.RecursiveWhitening"),
    "cifar10_full_muon": (
        "brisk.trainer.optimizers.muon.muon_with_aux",
        0.05,
        "brisk.whitening.NoWhitening",
    ),
    "cifar10_full_muon_recursive": (
        "brisk.trainer.optimizers.muon.muon_with_aux",
        0.1,
        "brisk.whitening.RecursiveWhitening",
    ),
}


def _sweep_jobs(*overrides: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for ``train <overrides>``, in launch order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose_root(*overrides)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params + list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_cifar10_full_preset_expands_into_five_arms_of_two_seeds() -> None:
    cfg = compose_root("sweep=cifar10_full")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert list(cfg.hydra.callbacks.sweep_summary.baselines) == ["experiment=cifar10_full_sgd"]
    jobs = _sweep_jobs("sweep=cifar10_full")
    arms = list(CIFAR10_FULL_ARMS)
    # seed 0 of every arm runs first, so an interrupted sweep already compares all arms
    assert [sorted(j) for j in jobs] == [
        sorted(["sweep=cifar10_full", f"seed={s}", f"experiment={a}"]) for s in (0, 1) for a in arms
    ]
    for job in jobs[:5]:
        job_cfg = compose_root(*job, "trainer.device=cuda", "trainer.num_workers=4")
        optimizer, lr, whitening = CIFAR10_FULL_ARMS[job_cfg.hydra.runtime.choices.experiment]
        assert (job_cfg.optimizer._target_, job_cfg.optimizer.lr) == (optimizer, lr)
        assert job_cfg.whitening._target_ == whitening
        assert job_cfg.model.name == "resnet20" and job_cfg.scheduler._target_.endswith("cosine")
        assert (job_cfg.dataset.val_size, job_cfg.dataset.train_subset) == (5000, None)
        trainer = job_cfg.trainer
        assert (trainer.epochs, trainer.batch_size, trainer.num_workers) == (10, 128, 4)
        assert trainer.device == "cuda" and 351 % trainer.log_every == 0  # a clock at each epoch
        if optimizer.startswith("brisk"):
            assert (job_cfg.optimizer.momentum, job_cfg.optimizer.weight_decay) == (0.95, 0.01)
        else:
            assert (job_cfg.optimizer.momentum, job_cfg.optimizer.weight_decay) == (0.9, 5e-4)


def test_cifar10_full_budget_preset_gives_four_arms_half_the_steps() -> None:
    jobs = _sweep_jobs("sweep=cifar10_full_budget")
    arms = [a for a in CIFAR10_FULL_ARMS if a != "cifar10_full_muon_recursive"]
    assert [sorted(j) for j in jobs] == [
        sorted(["sweep=cifar10_full_budget", f"seed={s}", f"experiment={a}", "trainer.epochs=5"])
        for s in (0, 1)
        for a in arms
    ]
    for job in jobs[:4]:
        job_cfg = compose_root(*job)
        optimizer, lr, whitening = CIFAR10_FULL_ARMS[job_cfg.hydra.runtime.choices.experiment]
        assert (job_cfg.optimizer._target_, job_cfg.optimizer.lr) == (optimizer, lr)
        assert job_cfg.whitening._target_ == whitening
        assert (job_cfg.trainer.epochs, job_cfg.trainer.batch_size) == (5, 128)
        assert job_cfg.hydra.sweep.dir.endswith("sweeps/cifar10_full_budget")
