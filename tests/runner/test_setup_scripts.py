"""scripts/train.sh installs the runtime only, scripts/test.sh adds the test extras, and the shared
stamp of scripts/_bootstrap.sh decides when to install: run as a user runs them, against a fake
virtual environment whose python, pip, train, ruff and mypy only record how they were called."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_TOOL = '#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$BRISK_FAKE_LOG"\n'


def _fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("python", "train", "ruff", "mypy"):
        path = venv / "bin" / tool
        path.write_text(FAKE_TOOL)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return venv


def _run(script: str, venv: Path, *args: str) -> list[str]:
    """Run scripts/SCRIPT against ``venv``; the calls its tools got, in order."""
    log = venv / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "BRISK_VENV": str(venv), "BRISK_FAKE_LOG": str(log)}
    env.pop("BRISK_EXTRAS", None)
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines() if log.is_file() else []


def _installs(calls: list[str]) -> list[str]:
    """What each pip install installed: the editable target's extras, "" for none."""
    found = []
    for call in calls:
        if " -m pip install " in call:
            target = call.split(" -e ", 1)[1]
            found.append(target.removeprefix(str(REPO_ROOT)))
    return found


def test_train_installs_the_runtime_and_test_adds_the_test_extras(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    calls = _run("train.sh", venv, "task=cifar")
    assert _installs(calls) == [""]  # the runtime only: no [test]
    assert calls[-1] == "train task=cifar"
    assert _installs(_run("train.sh", venv)) == []  # set up: nothing to install

    calls = _run("test.sh", venv, "-k", "resume")
    assert _installs(calls) == ["[test]"]  # the venv train.sh made gets the test extras
    assert any(c.startswith("ruff check") for c in calls)
    assert any(c.startswith("mypy") for c in calls)
    assert calls[-1].startswith("python -m pytest") and calls[-1].endswith("-k resume")
    assert _installs(_run("test.sh", venv)) == []
    assert _installs(_run("train.sh", venv)) == []  # the test extras do not bother train.sh


def test_a_changed_pyproject_reinstalls_with_the_extras_installed_before(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    _run("test.sh", venv)
    stamp = venv / ".brisk-installed"
    stamp.write_text("0" * 64 + "\nextras=test\n")  # as after a change of pyproject.toml
    assert _installs(_run("train.sh", venv)) == ["[test]"]
    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    assert stamp.read_text() == f"{digest}\nextras=test\n"


def test_a_stamp_from_before_extras_were_recorded_counts_as_test(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".brisk-installed").write_text(digest + "\n")  # every set-up installed [test] then
    assert _installs(_run("test.sh", venv)) == []
    assert _installs(_run("train.sh", venv)) == []


def test_ci_still_sets_up_through_test_sh() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci and "pip install" not in ci
