"""Config composition: every option of every group composes, and mistakes fail before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

import brisk.config  # noqa: F401  (registers schemas and resolvers)
from brisk.config.validate import validate_config

CONF = Path(__file__).resolve().parents[2] / "conf"
# Groups whose options need an optional extra (a Hydra plugin; tests/sweep covers them) or are
# hydra's own.
SKIP_GROUPS = {"hydra", "hparams_search"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module("brisk.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize(
    "group,option",
    [
        (g.name, o)
        for g in sorted(CONF.iterdir())
        if g.is_dir() and g.name not in SKIP_GROUPS
        for o in _options(g.name)
    ],
)
def test_every_option_composes_and_resolves(group: str, option: str) -> None:
    cfg = _compose([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate_config(cfg)  # and every shipped value is in its range


def test_task_selects_dataset_and_model_but_user_wins() -> None:
    cfg = _compose(["task=cifar"])
    assert cfg.dataset._target_.endswith("CifarDataModule") and cfg.model.name == "resnet20"
    cfg = _compose(["task=cifar", "dataset=cifar100", "model=resnet56", "trainer.epochs=3"])
    assert (
        cfg.dataset.variant == "cifar100"
        and cfg.model.name == "resnet56"
        and cfg.trainer.epochs == 3
    )


def test_misspelt_key_fails_naming_it() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["optimizer.lrr=0.1"])
    assert "lrr" in str(err.value.__cause__ or err.value)


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["whitening=foo"])
    message = str(err.value)
    assert "foo" in message and "none" in message


def test_wrong_type_fails() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)):
        _compose(["trainer.epochs=ten"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        _compose(["trainer.device=tpu"])
