"""Checkpoint files that cannot be used, read or trusted: what a run does with each.

A resume never starts over silently: an unreadable ``last.pt`` is continued from ``best.pt`` (and
said so) or refused in one line naming the file, the reason and the fix. A checkpoint of another
format version is refused by every reader. ``best.pt`` shares ``last.pt``'s file when both hold
the same step, and a later save of ``last.pt`` never changes it. Temporary files of a killed
writer are removed when the next run starts, a live writer's never.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from brisk.errors import UnsafeFileError, UserError
from brisk.run.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    UnreadableCheckpoint,
    atomic_save,
    read_checkpoint,
    share_file,
)
from brisk.train import train

FAST = ("debug=fast", "trainer.limit_train_batches=3")
SRC = Path(__file__).resolve().parents[2] / "src" / "brisk"


def _cut(path: Path, keep: int) -> None:
    """Replace ``path`` by a new file holding its first ``keep`` bytes (a copy cut off, a save
    that lost its tail); a new file, so a second name of the old one keeps its bytes."""
    head = path.read_bytes()[:keep]
    path.unlink()
    path.write_bytes(head)


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["step"])


def _crash_at_step_4(cfg, run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-epoch run (3 steps each) that dies after step 4: last.pt and best.pt hold step 3."""

    def lost(step: int, rank: int) -> None:
        if step == 4:
            raise RuntimeError("the node went away")

    with monkeypatch.context() as patch:
        patch.setattr("brisk.trainer.loop.maybe_inject_fault", lost)
        with pytest.raises(RuntimeError, match="the node went away"):
            train(cfg, run)


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The id of a process that is running (a writer still at work)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ---------------------------------------------------------------- an unreadable last.pt


@pytest.mark.parametrize("keep", [0, 1000], ids=["empty", "cut-off"])
def test_resume_auto_continues_from_best_when_last_cannot_be_read(
    cfg_digits,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    keep: int,
) -> None:
    runs = tmp_path / "outputs" / "runs"
    first = runs / "first"
    _crash_at_step_4(cfg_digits(*FAST, "trainer.epochs=2"), first, monkeypatch)
    last, best = first / "checkpoints" / "last.pt", first / "checkpoints" / "best.pt"
    _cut(last, keep)
    caplog.set_level(logging.INFO, logger="brisk")
    train(cfg_digits(*FAST, "trainer.epochs=2", "resume=auto"), runs / "second")
    assert f"resume=auto: continuing {first}" in caplog.text
    assert f"continuing from {best} at step 3 instead" in caplog.text
    assert f"resumed from {best} at step 3" in caplog.text
    assert _step(last) == 6  # the run went on to its end in its own directory
    assert not (runs / "second" / "checkpoints").exists()  # no fresh run from step 0


def test_resume_auto_refuses_when_no_checkpoint_of_the_run_can_be_read(
    cfg_digits, tmp_path: Path
) -> None:
    runs = tmp_path / "outputs" / "runs"
    train(cfg_digits(*FAST), runs / "first")
    (runs / "first" / "checkpoints" / "best.pt").unlink()
    _cut(runs / "first" / "checkpoints" / "last.pt", 1000)
    with pytest.raises(UserError) as refused:
        train(cfg_digits(*FAST, "resume=auto"), runs / "second")
    message = str(refused.value)
    assert "last.pt could not be read" in message and "move what cannot be read aside" in message
    assert "\n" not in message
    assert not (runs / "second" / "checkpoints").exists()


def test_an_empty_last_checkpoint_in_the_run_directory_names_the_reason_and_the_fix(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    train(cfg_digits(*FAST), run)
    last = run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "best.pt").unlink()
    last.unlink()
    last.write_bytes(b"")
    with pytest.raises(UserError) as refused:
        train(cfg_digits(*FAST), run)
    message = str(refused.value)
    assert f"checkpoint {last} could not be read: the file is empty (0 bytes)" in message
    assert f"move {last} aside to start this run again from step 0" in message
    assert not message.rstrip().endswith(":")


def test_the_run_directory_continues_from_best_when_its_last_is_empty(
    cfg_digits, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    _crash_at_step_4(cfg_digits(*FAST, "trainer.epochs=2"), run, monkeypatch)
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    _cut(last, 0)
    caplog.set_level(logging.INFO, logger="brisk")
    train(cfg_digits(*FAST, "trainer.epochs=2"), run)
    assert "the file is empty (0 bytes)" in caplog.text
    assert f"resumed from {best} at step 3" in caplog.text
    assert _step(last) == 6


def test_the_cli_refuses_an_empty_last_checkpoint_with_one_line_and_exit_2(
    cfg_digits, tmp_path: Path
) -> None:
    from tests.conftest import run_train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    proc = run_train(
        *FAST,
        f"hydra.run.dir={run}",
        "trainer.threads=1",
        check=False,
        env={"HYDRA_FULL_ERROR": ""},
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("brisk: error:")]
    assert len(errors) == 1 and "empty (0 bytes)" in errors[0] and "aside" in errors[0]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- format version, one reader


def test_a_checkpoint_of_another_format_version_is_refused_by_every_reader(
    cfg_digits, tmp_path: Path
) -> None:
    from brisk.models.pretrained import read_state_dict

    train(cfg_digits(*FAST), tmp_path / "a")
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    future = tmp_path / "future.pt"
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, future)
    said = f"written in checkpoint format version {FORMAT_VERSION + 1}"
    with pytest.raises(CheckpointError, match=said):
        read_checkpoint(future)
    with pytest.raises(UserError, match=said):  # model.checkpoint and a teacher's weights
        read_state_dict(future)
    with pytest.raises(UserError, match=said):
        train(cfg_digits(*FAST, f"ckpt_path={future}"), tmp_path / "b")
    with pytest.raises(UserError, match=said):
        train(cfg_digits(*FAST, f"init_from={future}"), tmp_path / "c")
    torch.save({**state, "format_version": FORMAT_VERSION}, tmp_path / "same.pt")
    assert read_checkpoint(tmp_path / "same.pt")["step"] == state["step"]


def test_checkpoint_files_are_read_in_one_place_and_only_with_weights_only() -> None:
    readers = {
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if re.search(r"\btorch\.load\(", p.read_text())
    }
    # distributed.py unpickles objects its own ranks sent (weights_only too), never a file
    assert readers == {"run/checkpoint.py", "run/distributed.py"}
    for name in readers:
        for line in (SRC / name).read_text().splitlines():
            assert "torch.load(" not in line or "weights_only=True" in line, line


def test_an_unreadable_file_names_its_size_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UnreadableCheckpoint) as failed:
        read_checkpoint(path)
    message = str(failed.value)
    assert f"checkpoint {path} could not be read (14 bytes" in message
    assert message.split(": ", 1)[1].strip()  # a reason follows
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


# ---------------------------------------------------------------- best.pt shares last.pt's file


def test_best_is_a_second_name_of_last_and_keeps_its_step_after_later_saves(
    tmp_path: Path,
) -> None:
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_save({"step": 1}, last)
    share_file(last, best)
    assert os.path.samefile(last, best)
    atomic_save({"step": 2}, last)  # the next save renames a new file over last.pt
    assert torch.load(best, weights_only=True) == {"step": 1}
    assert torch.load(last, weights_only=True) == {"step": 2}
    share_file(last, best)  # replaces the old best.pt in one rename
    assert torch.load(best, weights_only=True) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_best_is_copied_where_hard_links_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object) -> None:
        raise OSError(1, "Operation not permitted")

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_save({"step": 1}, last)
    monkeypatch.setattr("brisk.run.checkpoint.os.link", no_links)
    share_file(last, best)
    assert not os.path.samefile(last, best)
    assert best.read_bytes() == last.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_run_writes_each_step_once(
    cfg_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[int] = []
    real_save = torch.save

    def counting_save(obj: object, f: object) -> None:
        if isinstance(obj, dict) and "optimizer" in obj:
            saved.append(obj["step"])
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", counting_save)
    run = tmp_path / "run"
    train(cfg_digits(*FAST, "trainer.epochs=2"), run)
    assert saved == [3, 6]  # one write per epoch end, though best.pt improved at step 3
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    assert _step(best) in (3, 6)
    assert os.path.samefile(last, best) == (_step(best) == 6)


# ---------------------------------------------------------------- temporary files of killed saves


def test_a_run_removes_temporary_files_of_dead_writers_only(
    cfg_digits, tmp_path: Path, dead_pid: int, live_pid: int
) -> None:
    run = tmp_path / "run"
    folder = run / "checkpoints"
    folder.mkdir(parents=True)
    stale = [
        folder / f".tmp-last.pt.{dead_pid}.0123abcd",
        run / f".tmp-status.json.{dead_pid}.89abcdef",
    ]
    live = folder / f".tmp-last.pt.{live_pid}.fedcba98"
    other = folder / f".tmp-notes.{dead_pid}"  # not a name brisk writes: kept
    for path in [*stale, live, other]:
        path.write_bytes(b"x" * 100)
    train(cfg_digits(*FAST), run)
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()


class _Gadget:
    """A class a pickle would have to import (and could run code through)."""


def test_a_file_holding_python_objects_is_refused_naming_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"model": {}, "extra": _Gadget()}, path)
    with pytest.raises(UnsafeFileError) as refused:
        read_checkpoint(path)
    assert isinstance(refused.value, CheckpointError)
    assert not isinstance(refused.value, UnreadableCheckpoint)  # not a cut-off file
    assert "Unsupported global" in str(refused.value) and "_Gadget" in str(refused.value)
    assert "weights_only=True" in str(refused.value)
