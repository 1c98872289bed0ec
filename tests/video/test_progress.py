"""Generating and preparing a video data set shows a bar on a terminal, on rank 0 only."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from tests.video.conftest import tiny_shapes


class _StringTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_generation_and_preparation_bars_follow_the_terminal_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = {}
    for name, stream, rank in (
        ("tty", _StringTTY(), "0"),
        ("file", io.StringIO(), "0"),
        ("rank1", _StringTTY(), "1"),
    ):
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("RANK", rank)
        tiny_shapes(tmp_path / name).setup()
        monkeypatch.undo()
        shown[name] = stream.getvalue()
    assert "generating videos" in shown["tty"] and "video" in shown["tty"]
    assert "moving_shapes: preparing" in shown["tty"]
    assert "/24" in shown["tty"]  # 8 classes x (2 train + 1 test) videos
    assert shown["file"] == "" and shown["rank1"] == ""
