"""log_hparams leaves an HParams record TensorBoard can read, in the run's own directory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from brisk.run.hparams import flatten_config, log_hparams


def hparams_records(run_dir: Path) -> tuple[dict[str, bytes], EventAccumulator]:
    """The hparams plugin's content by tag, and the accumulator for the scalars."""
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME), acc


def test_event_file_holds_hparams_plugin_data(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.05, "nesterov": True},
            "scheduler": {"milestones": [0.5, 0.75]},
            "ckpt_path": None,
            "trainer": {"epochs": 2},
        }
    )
    log_hparams(tmp_path, flatten_config(cfg), {"best_val_acc1": 0.91, "test_acc1": None}, step=40)

    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []  # run_name=".": no sub-run
    content, acc = hparams_records(tmp_path)
    assert set(content) == {
        hparams_metadata.EXPERIMENT_TAG,
        hparams_metadata.SESSION_START_INFO_TAG,
        hparams_metadata.SESSION_END_INFO_TAG,
    }
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    hp = start.hparams
    assert hp["optimizer.lr"].number_value == 0.05
    assert hp["seed"].number_value == 3
    assert hp["optimizer.nesterov"].string_value == "True"
    assert hp["optimizer._target_"].string_value == "torch.optim.SGD"
    assert hp["scheduler.milestones"].string_value == "[0.5, 0.75]"
    assert hp["ckpt_path"].string_value == "None"
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert metric_tags == {"hparam/best_val_acc1", "hparam/test_acc1"}

    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    assert scalars["hparam/best_val_acc1"][0].value == pytest.approx(0.91)
    assert scalars["hparam/best_val_acc1"][0].step == 40
    assert math.isnan(scalars["hparam/test_acc1"][0].value)


def test_flatten_config_keeps_flat_dicts_and_prefixes_nested_ones() -> None:
    assert flatten_config({"a.b": 1, "c": {"d": {"e": "x"}, "f": []}, "g": {}}) == {
        "a.b": 1,
        "c.d.e": "x",
        "c.f": [],
        "g": {},
    }


def test_already_prefixed_metrics_are_not_prefixed_twice(tmp_path: Path) -> None:
    log_hparams(tmp_path, {"lr": 0.1}, {"hparam/val_acc1": 0.5})
    _, acc = hparams_records(tmp_path)
    assert "hparam/val_acc1" in acc.Tags()["scalars"]
    assert "hparam/hparam/val_acc1" not in acc.Tags()["scalars"]


def test_a_run_keeps_one_event_file_with_its_scalars_and_hparams(tmp_path: Path) -> None:
    from tests.conftest import run_train

    run_train("debug=fast", "trainer.threads=1", f"hydra.run.dir={tmp_path}")
    files = sorted((tmp_path / "tensorboard").iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents"), files
    content, acc = hparams_records(tmp_path / "tensorboard")
    assert hparams_metadata.SESSION_START_INFO_TAG in content
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/acc1", "test/acc1", "hparam/test_acc1"} <= scalars
