"""The prepared GPU comparison (``scripts/bench_gpu_step.py``) runs end to end: ``--smoke`` on
the CPU with tiny sizes, every arm stepping and a ratio printed for each."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu_step.py"


def test_the_gpu_comparison_runs_on_the_cpu_in_smoke_mode(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--smoke", "--json", str(tmp_path / "gpu.json")])
    arms = out["results"][0]["arms"]
    assert set(arms) == {"sgd", "evd", "recursive", "muon"}
    assert arms["sgd"]["ratio_to_sgd"] == 1.0
    assert all(row["step_s"] > 0 for row in arms.values())
    assert "| recursive |" in capsys.readouterr().out
    assert (tmp_path / "gpu.json").exists()
