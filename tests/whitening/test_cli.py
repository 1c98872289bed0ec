"""Whitening through the ``train`` command: config groups, logging, feature == evd, resume."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from tests.conftest import run_train

import brisk.config  # noqa: F401  (registers the config schemas)
from brisk.whitening import EVDWhitening, FeatureWhitening, RecursiveWhitening

# BatchNorm-free digits CNN: its convolutions have biases, so the bias algebra is exercised too
COMMON = (
    "debug=fast",
    "trainer.deterministic=true",
    "trainer.limit_train_batches=8",
    "trainer.threads=1",
    "model.batch_norm=false",
    "whitening.stats_every=1",
    "whitening.inverse_every=3",
)


def _train_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["split"] == "train"]


@pytest.mark.parametrize(
    "name, cls",
    [("feature", FeatureWhitening), ("evd", EVDWhitening), ("recursive", RecursiveWhitening)],
)
def test_config_group_instantiates_with_the_code_defaults(name: str, cls: type) -> None:
    with initialize_config_module(config_module="brisk.conf", version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[f"whitening={name}", "optimizer.weight_decay=0.003", "seed=7"],
        )
    w = instantiate(cfg.whitening)
    assert type(w) is cls and w.seed == 7
    # one set of defaults: the YAML adds only the run's seed to what the constructor declares
    assert w.settings == replace(cls().settings, seed=7)
    if name != "feature":  # read from the optimizer that steps each layer
        assert w.unpaired_weight_decay is None


def test_unknown_whitening_key_fails_at_composition() -> None:
    with (
        initialize_config_module(config_module="brisk.conf", version_base=None),
        pytest.raises(Exception, match="epsilon"),
    ):
        cfg = compose(config_name="config", overrides=["whitening=evd", "+whitening.epsilon=1"])
        instantiate(cfg.whitening)


@pytest.mark.slow
def test_feature_and_evd_give_the_same_per_step_losses(tmp_path: Path) -> None:
    """float32 end to end; refreshes at steps 0, 3, 6 re-map the feature weights and momentum."""
    for name in ("feature", "evd"):
        run_train(*COMMON, f"whitening={name}", f"hydra.run.dir={tmp_path / name}")
    feature, evd = _train_rows(tmp_path / "feature"), _train_rows(tmp_path / "evd")
    assert [r["step"] for r in feature] == [r["step"] for r in evd] == [str(s) for s in range(1, 9)]
    diffs = [abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(feature, evd)]
    assert max(diffs) < 1e-4, diffs
    # and whitening is not a no-op: plain SGD follows another path
    plain_overrides = [o for o in COMMON if not o.startswith("whitening.")]
    run_train(*plain_overrides, "whitening=none", f"hydra.run.dir={tmp_path / 'none'}")
    plain = _train_rows(tmp_path / "none")
    assert max(abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(plain, evd)) > 1e-3


@pytest.mark.slow
def test_recursive_logs_per_layer_conditioning_and_resumes_exactly(tmp_path: Path) -> None:
    common = (*COMMON, "whitening=recursive", "whitening.condition_every=1")
    common = (*common, "trainer.checkpoint_every=3", "trainer.epochs=2")
    run_train(*common, f"hydra.run.dir={tmp_path / 'full'}")
    rows = _train_rows(tmp_path / "full")
    for key in (
        "whiten/kappa_R/features.0",
        "whiten/kappa_white/features.4",
        "whiten/kappa_R/fc",
        "whiten/seconds_stats",
        "whiten/seconds_decomposition",
        "whiten/seconds_transform",
        "whiten/fallbacks",
    ):
        assert rows[-1][key] != "", key
    assert float(rows[-1]["whiten/kappa_white/features.0"]) < float(
        rows[-1]["whiten/kappa_R/features.0"]
    )
    assert json.loads((tmp_path / "full" / "status.json").read_text())["status"] == "ok"

    killed = run_train(
        *common,
        f"hydra.run.dir={tmp_path / 'cut'}",
        env={"BRISK_FAULT_AT_STEP": "11"},
        check=False,
    )
    assert killed.returncode != 0
    run_train(*common, "resume=auto", f"hydra.run.dir={tmp_path / 'cut'}")
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["step"] == full["step"] == 16
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for name, layer in full["whitening"]["layers"].items():
        assert torch.equal(layer["state"]["q"], resumed["whitening"]["layers"][name]["state"]["q"])


def test_reduced_cifar_preset_composes_the_documented_workload() -> None:
    with initialize_config_module(config_module="brisk.conf", version_base=None):
        preset = compose(
            config_name="config",
            overrides=["experiment=whitening_cifar10_5k", "whitening=recursive"],
        )
        explicit = compose(
            config_name="config",
            overrides=[
                "experiment=cifar10_cpu_budget",
                "dataset.train_subset=5000",
                "trainer.limit_eval_batches=40",
                "whitening=recursive",
            ],
        )
    assert preset.model.name == "resnet20"
    for key in ("dataset", "trainer", "optimizer", "scheduler", "whitening", "model"):
        assert preset[key] == explicit[key], key
