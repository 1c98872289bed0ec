"""One process per run directory, and what a full disk or a corrupt status.json does to a run."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from brisk.run.checkpoint import StorageError, atomic_save
from brisk.run.run_dir import RunDirectoryBusy, RunLock, RunPaths
from brisk.train import train

FAST = ("debug=fast", "trainer.limit_train_batches=2")


def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(
    cfg_digits, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # flock conflicts between two open files, even in one process
    busy = pytest.raises(RunDirectoryBusy, match=f"in use by process {os.getpid()}")
    with RunLock(RunPaths(run)), busy:
        train(cfg_digits(*FAST), run)
    assert not (run / "status.json").exists()
    train(cfg_digits(*FAST), run)  # released: the run goes ahead
    assert json.loads((run / "status.json").read_text())["status"] == "ok"


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_save({"step": 1}, path)
    monkeypatch.setattr("brisk.run.checkpoint.os.fsync", _no_space)
    with pytest.raises(StorageError) as failed:
        atomic_save({"step": 2}, path)
    assert str(path) in str(failed.value) and "free there" in str(failed.value)
    assert "ENOSPC" in str(failed.value)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_out_of_disk_during_a_run_fails_with_one_message_and_cleans_up(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real_save = torch.save

    def save_then_fill_disk(obj: object, f: object) -> None:
        real_save(obj, f)
        if isinstance(obj, dict) and "optimizer" in obj:
            raise RuntimeError("PytorchStreamWriter failed") from OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC)
            )

    monkeypatch.setattr("brisk.run.checkpoint.torch.save", save_then_fill_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        train(cfg_digits(*FAST), run)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "StorageError" in status["error"]
    assert not list(run.rglob(".tmp-*"))


def test_corrupt_status_json_is_replaced_and_logged(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text('{"status": "runn')
    caplog.set_level(logging.WARNING, logger="brisk")
    train(cfg_digits(*FAST), run)
    assert json.loads((run / "status.json").read_text())["status"] == "ok"
    assert (run / "status.json.corrupt").read_text() == '{"status": "runn'
    assert "status.json is not valid JSON" in caplog.text


def test_a_refused_second_process_leaves_the_live_runs_record_as_it_was(tmp_path: Path) -> None:
    """``train hydra.run.dir=R optimizer.lr=0.5`` while another process holds R: exit 2 with one
    line, and not one byte of R changes (Hydra would rewrite .hydra/*.yaml, which sweep summaries
    read, and append the refusal's traceback to train.log)."""
    import subprocess
    import sys

    from tests.conftest import run_train

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    record = {
        ".hydra/config.yaml": "optimizer:\n  lr: 0.05\n",
        ".hydra/overrides.yaml": "- optimizer.lr=0.05\n",
        ".hydra/hydra.yaml": "hydra:\n  run:\n    dir: R\n",
        "train.log": "[INFO] step 10 of the live run\n",
        "status.json": '{"status": "running"}\n',
    }
    for name, text in record.items():
        (run / name).write_text(text)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from brisk.run.run_dir import RunLock, RunPaths;"
            f"lock = RunLock(RunPaths(Path({str(run)!r}))); lock.acquire(); print('held', "
            "flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        proc = run_train(
            f"hydra.run.dir={run}",
            "optimizer.lr=0.5",
            "trainer.threads=1",
            env={"HYDRA_FULL_ERROR": "0"},
            check=False,
        )
    finally:
        holder.communicate("", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"in use by process {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten, nothing added


def _run_dirs(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[str, str]:
    """hydra.run.dir and hydra.sweep.dir as ``train`` resolves them with this environment."""
    from hydra import compose, initialize_config_module

    from brisk.config import CONFIG_NAME, TORCHRUN_ENV

    for key in (*TORCHRUN_ENV, "RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with initialize_config_module(config_module="brisk.conf", version_base="1.3"):
        cfg = compose(CONFIG_NAME, ["paths.output_dir=/out"], return_hydra_config=True)
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


def test_torchelastic_run_id_names_the_run_directory_only_under_torchrun_and_safely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import re

    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}"
    # a value left in a shell: ignored, each run gets its own dated directory
    run, sweep = _run_dirs(monkeypatch, TORCHELASTIC_RUN_ID="../../x")
    assert re.fullmatch(f"/out/runs/{stamp}", run) and re.fullmatch(f"/out/sweeps/{stamp}", sweep)
    torchrun = {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "RANK": "1"}
    # under torchrun: the rendezvous id, the same for every rank
    assert _run_dirs(monkeypatch, TORCHELASTIC_RUN_ID="job-42.a", **torchrun)[0] == (
        "/out/runs/job-42.a"
    )
    # never outside paths.output_dir, never a hidden or nested folder
    for hostile in ("../../x", "..", "a/../../b", ".hidden", "/etc"):
        run, sweep = _run_dirs(monkeypatch, TORCHELASTIC_RUN_ID=hostile, **torchrun)
        name = Path(run).name
        assert Path(run).parent == Path("/out/runs") and Path(sweep).parent == Path("/out/sweeps")
        assert ".." not in name and "/" not in name and not name.startswith("."), (hostile, run)
