"""``train`` under ``torchrun`` on CPU (gloo, 2 processes), as users launch it.

One uninterrupted 2-process run is shared by the tests of this module: its layout, its equality with
a 1-process run of the same global batch and seed, and the elastic run that must end with its
weights.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO_ROOT, run_train

pytestmark = pytest.mark.slow

# Debug-sized digits runs: 2 epochs of 5 steps, mid-epoch checkpoints, full evaluation (val 270
# samples, test 359: an odd count, so a padded shard would show in the reduced metrics).
# BatchNorm would normalise each rank's half batch by its own statistics: off for exact equality.
COMMON = (
    "trainer.epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.checkpoint_every=3",
    "trainer.log_every=1",
    "trainer.deterministic=true",
    "model.batch_norm=false",
    "optimizer.lr=0.2",
)
# Measured: 3.0e-6 (whitening=none) after 10 steps, with weights up to 0.33; the bound the issue
# asks.
WEIGHT_TOLERANCE = 1e-5


def torchrun(
    *overrides: str,
    output_dir: Path,
    launcher_args: tuple[str, ...] = (),
    no_python: bool = False,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=2 [-m brisk.train | --no-python train] ...``."""
    bin_dir = str(Path(sys.executable).parent)
    program = ["--no-python", "train"] if no_python else ["-m", "brisk.train"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            *launcher_args,
            *program,
            *overrides,
            f"paths.output_dir={output_dir}",
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "HYDRA_FULL_ERROR": "1",
            "BRISK_DIST_TIMEOUT_S": "60",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def the_run_dir(output_dir: Path) -> Path:
    runs = sorted((output_dir / "runs").iterdir())
    assert len(runs) == 1, f"expected one run directory for all ranks, got {runs}"
    return runs[0]


def rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(*COMMON, output_dir=out)
    return the_run_dir(out), proc.stdout + proc.stderr


def test_one_run_directory_one_log_per_rank_and_rank0_writes(
    two_process_run: tuple[Path, str],
) -> None:
    run, output = two_process_run
    for name in ("train.log", "train_rank1.log", "metrics.csv", "status.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob("train_rank0*.log")) and not list(run.glob("*rank2*"))
    assert "run directory" in (run / "train_rank1.log").read_text()
    # rank 1's INFO lines go to its file only, not to the terminal a second time
    assert output.count("final test acc1") == 1
    # rank 0 alone writes metrics and TensorBoard: no duplicated rows, one writer process
    split_steps = [(r["split"], r["step"]) for r in rows(run)]
    assert len(split_steps) == len(set(split_steps))
    assert [r["step"] for r in rows(run) if r["split"] == "train"] == [str(s) for s in range(1, 11)]
    # event file names end in .<host>.<pid>.<n>: every one of them comes from the same process
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "ok" and status["error"] is None and status["steps"] == 10
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 10
    # each rank's random streams are saved, so an elastic restart continues every one of them
    per_rank = ckpt["rng_per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])


def test_two_processes_train_the_weights_of_one_process(
    two_process_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, _ = two_process_run
    run_train(*COMMON, f"hydra.run.dir={tmp_path}")
    single = weights(tmp_path / "checkpoints" / "last.pt")
    diff = max_abs_diff(weights(run / "checkpoints" / "last.pt"), single)
    print(f"whitening=none: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= WEIGHT_TOLERANCE

    from brisk.models import create_model

    torch.manual_seed(42)  # the runner seeds with cfg.seed right before building the model
    initial = create_model("small_cnn", num_classes=10, batch_norm=False).state_dict()
    assert max_abs_diff(initial, single) > 1000 * WEIGHT_TOLERANCE  # training moved the weights

    # reduced metrics are exact: same sums and counts as one process on every split
    two = {(r["split"], r["step"]): r for r in rows(run)}
    one = {(r["split"], r["step"]): r for r in rows(tmp_path)}
    assert two.keys() == one.keys()
    for key, row in one.items():
        assert float(two[key]["acc1"]) == pytest.approx(float(row["acc1"]), abs=1e-6), key
        assert float(two[key]["loss"]) == pytest.approx(float(row["loss"]), abs=1e-5), key


@pytest.mark.parametrize(
    ("precision", "tolerance"),
    [
        # With float32 statistics and eps=0.01 the inverse amplifies rounding differences
        # of the statistics (ranks sum halves; the first batch is shifted by zero, not by its mean):
        # after one step covariances 2e-6 apart, fc preconditioner 2e-3 relative, weights 1.1e-5;
        # after 10 steps 2.2e-4. A larger eps keeps the inverse well conditioned (measured 4.7e-6)
        # ...
        (("whitening.eps=0.1",), WEIGHT_TOLERANCE),
        # ... and float64 statistics remove their share at eps=0.01: measured 9.3e-6 after
        # these 5 steps against 9.0e-5 with float32 statistics. What is left is float32 gradient
        # rounding, amplified by the inverse.
        (("whitening.stats_dtype=float64", "whitening.eps=0.01"), 2 * WEIGHT_TOLERANCE),
    ],
    ids=["float32-eps0.1", "float64-eps0.01"],
)
def test_evd_whitening_two_processes_train_the_weights_of_one_process(
    tmp_path: Path, precision: tuple[str, ...], tolerance: float
) -> None:
    if not (REPO_ROOT / "conf" / "whitening" / "evd.yaml").is_file():
        pytest.skip("conf/whitening/evd.yaml (whitening=evd) is not in this checkout")
    evd = (
        *(o for o in COMMON if not o.startswith("trainer.epochs=")),
        "trainer.epochs=1",
        "whitening=evd",
        "whitening.stats_every=1",
        "whitening.inverse_every=2",
        "whitening.stats_max_rows=null",  # sub-sampling draws different rows on 1 and 2 ranks
        *precision,
    )
    run_train(*evd, f"hydra.run.dir={tmp_path / 'one'}")
    torchrun(*evd, output_dir=tmp_path / "two")
    two = the_run_dir(tmp_path / "two")
    diff = max_abs_diff(
        weights(two / "checkpoints" / "last.pt"),
        weights(tmp_path / "one" / "checkpoints" / "last.pt"),
    )
    print(f"whitening=evd {precision}: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= tolerance


def test_killed_worker_is_restarted_and_the_run_completes_once(
    two_process_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Rank 1 is SIGKILLed after step 7 of 10 in the first attempt; the last checkpoint is 6."""
    proc = torchrun(
        *COMMON,
        output_dir=tmp_path,
        launcher_args=("--max-restarts=1",),
        no_python=True,
        env={"BRISK_FAULT_AT_STEP": "7", "BRISK_FAULT_RANK": "1"},
    )
    run = the_run_dir(tmp_path)
    assert "killing rank 1 after step 7" in (run / "train_rank1.log").read_text()
    assert "resumed from" in proc.stdout and "at step 6" in proc.stdout
    # the final metrics are written once: one test row, every train step once, a clean status
    table = rows(run)
    assert [r["split"] for r in table].count("test") == 1
    assert [int(r["step"]) for r in table if r["split"] == "train"] == list(range(1, 11))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "ok" and status["error"] is None and "traceback" not in status
    test_row = next(r for r in table if r["split"] == "test")
    assert float(status["test_acc1"]) == pytest.approx(float(test_row["acc1"]), abs=1e-6)
    # and it ends where the uninterrupted run ends (deterministic CPU: bit-identical)
    reference, _ = two_process_run
    restarted = weights(run / "checkpoints" / "last.pt")
    for key, value in weights(reference / "checkpoints" / "last.pt").items():
        assert torch.equal(value, restarted[key]), key
