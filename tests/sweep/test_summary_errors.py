"""What summary.md says about a failed job: the real error's line, not the wrapper's."""

from __future__ import annotations

from pathlib import Path

from fake_sweep import make_job

from brisk.sweep.summary import summarize

# The status.json error of a job whose model could not be allocated, as the runner records it:
# Hydra's instantiate wraps the allocator's error and ends with the key it was building.
ALLOCATION = (
    "InstantiationException: Error in call to target 'brisk.models.registry.create_model':\n"
    "RuntimeError(\"[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
    "allocate memory: you tried to allocate 6480000000000 bytes. Error code 12 (Cannot allocate "
    'memory)")\n'
    "full_key: model"
)


def test_a_job_failing_to_allocate_shows_the_allocators_error_in_summary_md(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["model.width=8"], val=[(10, 0.5)], test=0.5)
    make_job(sweep, 1, ["model.width=300000"], status="failed", error=ALLOCATION)
    text = summarize(sweep).markdown.read_text()
    failed = text[text.index("## Failed or unfinished jobs") :]
    row = next(line for line in failed.splitlines() if line.startswith("| 1 |"))
    assert "RuntimeError: [enforce fail at alloc_cpu.cpp:127]" in row
    assert "can't allocate memory: you tried to allocate 6480000000000 bytes" in row
    assert row.rstrip(" |").endswith("(building model)")
    assert "full_key" not in row


def test_a_plain_error_keeps_its_last_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["seed=1"], val=[(10, 0.5)], test=0.5)
    make_job(sweep, 1, ["seed=2"], status="failed", error="ValueError('a', 'b')\nKeyError: 'x'")
    text = summarize(sweep).markdown.read_text()
    assert "| KeyError: 'x' |" in text
