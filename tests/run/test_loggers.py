"""The ``logger`` group: TensorBoard, CSV, W&B (offline) and MLflow (a local store), and lists of
them; what each external logger received is read back and compared with metrics.csv."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tests.conftest import REPO_ROOT, compose_config, run_train

from brisk.train import train

FAST = ("debug=fast", "trainer.limit_train_batches=3")


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _csv_series(run_dir: Path, split: str, column: str) -> dict[int, float]:
    return {
        int(r["step"]): float(r[column])
        for r in _rows(run_dir)
        if r["split"] == split and r.get(column) not in (None, "")
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), ["tensorboard"]),
        (("logger=csv",), ["csv"]),
        (("logger=[tensorboard,wandb]",), ["tensorboard", "wandb"]),
        (("logger=many",), ["tensorboard", "wandb", "mlflow"]),
        (("logger=[mlflow,csv]", "logger.mlflow.experiment_name=x"), ["mlflow", "csv"]),
    ],
)
def test_logger_group_selects_one_or_several(overrides: tuple[str, ...], expected) -> None:
    cfg = compose_config(*overrides)
    assert list(cfg.logger) == expected
    if "mlflow" in expected and len(overrides) > 1:
        assert cfg.logger.mlflow.experiment_name == "x"


def test_csv_logger_writes_metrics_csv_and_no_tensorboard(cfg_digits, tmp_path: Path) -> None:
    train(cfg_digits(*FAST, "logger=csv"), tmp_path / "csv")
    assert [r["split"] for r in _rows(tmp_path / "csv")][-2:] == ["val", "test"]
    assert not (tmp_path / "csv" / "tensorboard").exists()
    train(cfg_digits(*FAST), tmp_path / "tb")
    assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_a_logger_whose_extra_is_missing_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The `train` command with wandb made unimportable, as on an install without the extra."""
    script = (
        "import sys; sys.modules['wandb'] = None; "
        "from brisk.train import main; sys.argv[0] = 'train'; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brisk: error: logger=wandb"), proc.stderr
    assert '".[wandb]"' in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()  # refused before any work
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "[wandb]" in status["error"]


# ----------------------------------------------------------------------------- W&B offline files
def _wandb_records(path: Path):
    """The records of an offline run file (``run-<id>.wandb``): W&B's LevelDB-style log of 32 KiB
    blocks (7-byte header ``:W&B`` + magic + version, then records of crc32, length, type) holding
    ``wandb_internal_pb2.Record`` protobufs. The Python SDK no longer ships a reader for it."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header, pos, pending = 32768, 7, 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 2):  # full, first
            pending = chunk
        else:  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _wandb_run(wandb_dir: Path, run_id: str) -> dict:
    """History (last value per step, in logging order), config, group and summary of a run,
    over every offline attempt of it (a resumed run writes a second offline-run folder)."""
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    history: dict[str, dict[int, float]] = {}
    config: dict = {}
    summary: dict = {}
    groups = set()
    for file in files:
        for record in _wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                groups.add(record.run.run_group)
            elif kind == "config":
                for item in record.config.update:
                    config[item.key] = json.loads(item.value_json)
            elif kind == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                for key, value in row.items():
                    if not key.startswith("_"):
                        history.setdefault(key, {})[int(row["_step"])] = value
            elif kind == "summary":
                for item in record.summary.update:
                    if item.key:
                        summary[item.key] = json.loads(item.value_json)
    return {
        "files": files,
        "history": history,
        "config": config,
        "summary": summary,
        "groups": groups,
    }


@pytest.mark.slow
def test_wandb_and_mlflow_receive_the_run_and_continue_it_after_preemption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM at step 28 (a scheduler's preemption), then ``resume=auto``: one W&B run and one
    MLflow run hold every row of metrics.csv, the config, the final figures and the group."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path / 'mlruns'}"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_SILENT": "true",
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 asks to opt in to the folder store
    }
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the client reading it back
    run_dir = tmp_path / "run"
    common = [
        "trainer.epochs=3",
        "trainer.checkpoint_every=5",
        "trainer.log_every=1",
        "trainer.threads=1",
        "seed=3",
        "optimizer.lr=0.07",
        "logger=[tensorboard,wandb,mlflow]",
        f"logger.mlflow.tracking_uri={store}",
        f"hydra.run.dir={run_dir}",
    ]
    stopped = run_train(
        *common, env={**env, "BRISK_FAULT_AT_STEP": "28", "BRISK_FAULT_SIGNAL": "TERM"}, check=False
    )
    assert stopped.returncode == 128 + 15, stopped.stderr
    ids = json.loads((run_dir / "loggers.json").read_text())
    run_train(*common, "resume=auto", env=env)
    assert json.loads((run_dir / "loggers.json").read_text()) == ids  # the same runs continued
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok"
    # the sweep's grouping key: the overrides minus seed and the keys that change how a run is
    # launched or how often it reports (logger, hydra, resume, trainer.threads, trainer.log_every)
    group = "optimizer.lr=0.07 trainer.epochs=3"

    wb = _wandb_run(tmp_path / "wandb_dir", ids["wandb"])
    assert len(wb["files"]) == 2 and wb["groups"] == {group}
    assert wb["config"]["optimizer"]["lr"] == 0.07 and wb["config"]["seed"] == 3
    assert wb["config"]["brisk"]["group"] == group
    assert wb["summary"]["test_acc1"] == pytest.approx(status["test_acc1"])
    assert wb["summary"]["best_val_acc1"] == pytest.approx(status["best_val_acc1"])

    client = MlflowClient(tracking_uri=store)
    mlflow_run = client.get_run(ids["mlflow"])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["brisk.group"] == group
    assert mlflow_run.data.params["optimizer.lr"] == "0.07"
    assert mlflow_run.data.metrics["test_acc1"] == pytest.approx(status["test_acc1"])
    assert len(client.search_runs([mlflow_run.info.experiment_id])) == 1

    for split, column in (("train", "loss"), ("train", "lr"), ("val", "acc1"), ("test", "acc1")):
        expected = _csv_series(run_dir, split, column)
        assert len(expected) == {"train": 54, "val": 3, "test": 1}[split]
        history = client.get_metric_history(ids["mlflow"], f"{split}/{column}")
        logged = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
        assert logged.keys() == expected.keys(), (split, column)
        # metrics.csv keeps 6 significant digits
        for step, value in expected.items():
            assert logged[step] == pytest.approx(value, rel=1e-5, abs=1e-7), (split, column, step)
            assert wb["history"][f"{split}/{column}"][step] == pytest.approx(
                value, rel=1e-5, abs=1e-7
            ), (split, column, step)
        assert wb["history"][f"{split}/{column}"].keys() == expected.keys()
    assert OmegaConf.create(wb["config"]).trainer.epochs == 3


def test_only_rank_0_opens_the_external_loggers(tmp_path: Path) -> None:
    """Another rank gets TensorBoard's flag and nothing else: no W&B or MLflow run, no ids file."""
    from brisk.run.loggers import open_loggers

    cfg = compose_config("logger=many")
    loggers = open_loggers(cfg.logger, tmp_path, "seed: 0\n", "digits", [], [], enabled=False)
    assert loggers.tensorboard and loggers.external == []
    assert not (tmp_path / "loggers.json").exists()


def test_group_is_the_sweeps_key_without_seed_and_launch_keys(tmp_path: Path) -> None:
    from brisk.run.loggers import open_loggers

    overrides = [
        "whitening=recursive",
        "seed=2",
        "optimizer.lr=0.2",
        "resume=auto",
        "trainer.threads=1",
        "logger=[tensorboard,wandb]",
        "paths.data_dir=/data",
        "trainer.epochs=4",
    ]
    cfg = compose_config("logger=csv")
    loggers = open_loggers(cfg.logger, tmp_path, "", "cifar", overrides, ["trainer.epochs"], False)
    assert loggers.group == "optimizer.lr=0.2 whitening=recursive"
    assert not loggers.tensorboard
    alone = open_loggers(cfg.logger, tmp_path, "", "cifar", ["seed=1"], [], False)
    assert alone.group == "(no overrides)"


def test_tensorboard_hparams_carry_the_group_and_the_ema_figures(cfg_digits, tmp_path) -> None:
    from tensorboard.plugins.hparams import metadata
    from tests.run.test_hparams import hparams_records

    train(cfg_digits(*FAST, "trainer.ema.enabled=true"), tmp_path)
    content, _ = hparams_records(tmp_path / "tensorboard")
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["brisk.group"].string_value == "(no overrides)"  # not under Hydra
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert {m.name.tag for m in experiment.metric_infos} == {
        "hparam/best_val_acc1",
        "hparam/test_acc1",
        "hparam/best_val_ema_acc1",
        "hparam/test_ema_acc1",
    }


def test_the_choice_of_loggers_does_not_change_the_training(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening and feeding W&B and MLflow leaves the training as it is: the same rows as with
    metrics.csv alone (their random ids are drawn with the run's streams saved and restored)."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    train(cfg_digits(*FAST, "logger=csv"), tmp_path / "csv")
    store = f"logger.mlflow.tracking_uri=file://{tmp_path / 'mlruns'}"
    train(cfg_digits(*FAST, "logger=[wandb,mlflow]", store), tmp_path / "many")
    columns = ("step", "split", "loss", "acc1", "lr")
    for a, b in zip(_rows(tmp_path / "csv"), _rows(tmp_path / "many"), strict=True):
        assert [a[c] for c in columns] == [b[c] for c in columns]
    assert json.loads((tmp_path / "many" / "loggers.json").read_text()).keys() == {
        "wandb",
        "mlflow",
    }
