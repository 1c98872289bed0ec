"""summarize() on fake sweep directories: every number checked against a hand computation."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from fake_sweep import TRACEBACK, make_job, standard_sweep

from brisk.sweep.summary import summarize

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def num(text: str) -> float | None:
    return None if text == "" else float(text)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return standard_sweep(tmp_path)


def test_per_job_csv_has_one_row_per_job_with_status_and_metrics(sweep: Path) -> None:
    paths = summarize(sweep)
    rows = read_csv(paths.per_job_csv)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "ok", "failed", "missing"]
    assert rows[0]["overrides"] == "optimizer.lr=0.1 seed=0 debug=fast"
    assert rows[0]["config"] == "optimizer.lr=0.1"
    assert [r["seed"] for r in rows] == ["0", "1", "0", "1", "0", "1"]
    first = rows[0]
    assert num(first["final_val_acc"]) == 0.9
    assert num(first["best_val_acc"]) == 0.9
    assert num(first["test_acc"]) == 0.88
    assert num(first["final_train_loss"]) == 0.5
    assert num(first["last_step"]) == 30
    assert "RuntimeError: loss is NaN" in rows[4]["error"]
    assert rows[4]["error"] == TRACEBACK  # the whole traceback survives the CSV round trip
    assert num(rows[4]["final_train_loss"]) == 2.3
    assert "no status.json" in rows[5]["error"]
    assert rows[5]["final_val_acc"] == "" and rows[5]["test_acc"] == ""


def test_grouped_means_and_stds_over_seeds(sweep: Path) -> None:
    rows = {r["config"]: r for r in read_csv(summarize(sweep).grouped_csv)}
    assert list(rows) == ["optimizer.lr=0.1", "optimizer.lr=0.05", "optimizer.lr=0.5"]
    fast, slow, broken = (
        rows["optimizer.lr=0.1"],
        rows["optimizer.lr=0.05"],
        rows["optimizer.lr=0.5"],
    )
    expected = {
        "final_val_acc": ([0.9, 0.92], [0.7, 0.8]),
        "best_val_acc": ([0.9, 0.92], [0.7, 0.8]),
        "test_acc": ([0.88, 0.90], [0.69, 0.79]),
        "final_train_loss": ([0.5, 0.4], [1.0, 0.8]),
    }
    for name, (a, b) in expected.items():
        assert num(fast[f"{name}_mean"]) == pytest.approx(statistics.fmean(a)), name
        assert num(fast[f"{name}_std"]) == pytest.approx(statistics.stdev(a)), name
        assert num(slow[f"{name}_mean"]) == pytest.approx(statistics.fmean(b)), name
        assert num(slow[f"{name}_std"]) == pytest.approx(statistics.stdev(b)), name
    # by hand: stdev(0.9, 0.92) = 0.02 / sqrt(2)
    assert num(fast["final_val_acc_std"]) == pytest.approx(0.02 / math.sqrt(2))
    assert (fast["n_jobs"], fast["n_ok"], fast["seeds"]) == ("2", "2", "0 1")
    assert (broken["n_jobs"], broken["n_ok"]) == ("2", "0")
    assert broken["final_val_acc_mean"] == "" and broken["final_train_loss_mean"] == ""
    assert fast["overrides"] == "debug=fast optimizer.lr=0.1"


def test_default_target_is_best_final_mean_and_steps_counted_per_seed(sweep: Path) -> None:
    paths = summarize(sweep)
    grouped = {r["config"]: r for r in read_csv(paths.grouped_csv)}
    # no whitening=none / teacher=none here: every configuration is a baseline; best final mean
    # is lr=0.1 with (0.9 + 0.92) / 2 = 0.91, reached only by seed 1 (0.92 at step 30).
    assert num(grouped["optimizer.lr=0.1"]["target_acc"]) == pytest.approx(0.91)
    assert grouped["optimizer.lr=0.1"]["steps_to_target_reached"] == "1/2"
    assert num(grouped["optimizer.lr=0.1"]["steps_to_target_mean"]) == 30
    assert grouped["optimizer.lr=0.1"]["steps_to_target_std"] == ""
    assert grouped["optimizer.lr=0.05"]["steps_to_target_reached"] == "0/2"
    assert grouped["optimizer.lr=0.05"]["steps_to_target_mean"] == ""
    per_job = read_csv(paths.per_job_csv)
    assert [r["steps_to_target"] for r in per_job] == ["", "30", "", "", "", ""]


def test_given_target_acc(sweep: Path) -> None:
    grouped = {r["config"]: r for r in read_csv(summarize(sweep, target_acc=0.8).grouped_csv)}
    # lr=0.1: both seeds reach 0.8 at step 20 (seed 0 exactly 0.8); lr=0.05: seed 1 at step 30
    assert num(grouped["optimizer.lr=0.1"]["steps_to_target_mean"]) == 20
    assert num(grouped["optimizer.lr=0.1"]["steps_to_target_std"]) == 0
    assert grouped["optimizer.lr=0.1"]["steps_to_target_reached"] == "2/2"
    assert num(grouped["optimizer.lr=0.05"]["steps_to_target_mean"]) == 30
    assert grouped["optimizer.lr=0.05"]["steps_to_target_reached"] == "1/2"
    assert num(grouped["optimizer.lr=0.05"]["target_acc"]) == 0.8


def test_baseline_configuration_sets_the_default_target(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    curves = {"none": [(10, 0.5), (20, 0.7)], "evd": [(10, 0.72), (20, 0.8)]}
    for i, (method, seed) in enumerate([(m, s) for m in curves for s in (0, 1)]):
        shift = 0.02 * seed
        make_job(
            sweep,
            i,
            [f"whitening={method}", f"seed={seed}"],
            val=[(s, v + shift) for s, v in curves[method]],
            train=[(5, 1.0)],
        )
    paths = summarize(sweep)
    grouped = {r["config"]: r for r in read_csv(paths.grouped_csv)}
    # the baseline (whitening=none) ends at mean 0.71, evd gets there at step 10 on both seeds
    assert num(grouped["whitening=evd"]["target_acc"]) == pytest.approx(0.71)
    assert num(grouped["whitening=evd"]["steps_to_target_mean"]) == 10
    assert grouped["whitening=none"]["steps_to_target_reached"] == "1/2"
    assert "best baseline configuration `whitening=none`" in paths.markdown.read_text()


def test_group_ignore_pools_jobs_that_differ_only_in_that_key(sweep: Path) -> None:
    grouped = read_csv(summarize(sweep, group_ignore=["optimizer.lr"]).grouped_csv)
    assert len(grouped) == 1
    assert (grouped[0]["n_jobs"], grouped[0]["n_ok"]) == ("6", "4")
    assert num(grouped[0]["final_val_acc_mean"]) == pytest.approx(
        statistics.fmean([0.9, 0.92, 0.7, 0.8])
    )


def test_markdown_table_and_failed_jobs(sweep: Path) -> None:
    text = summarize(sweep).markdown.read_text()
    assert "6 jobs: 1 failed, 1 missing, 4 ok." in text
    assert "Overrides shared by every job: `debug=fast`." in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| config |"))
    table = lines[header : header + 5]
    assert table[1] == "|---|---|---|---|---|---|---|---|---|---|"
    # final val 91.00 ± 1.41, best the same, test 89.00 ± 1.41, loss 0.4500 ± 0.0707,
    # steps-to-target 30 from the one seed that reached 91%; every row's clock reads 1.5 s, so the
    # target is reached at 1.5 s, 1.00x the baseline's (lr 0.1's) run time of 1.5 s
    assert table[2] == (
        "| `optimizer.lr=0.1` | 2/2 | 91.00 ± 1.41 | 91.00 ± 1.41 | 89.00 ± 1.41 "
        "| 0.4500 ± 0.0707 | 30 (1/2) | 2 | 1.00x | 2 ± 0 |"
    )
    assert table[3] == (
        "| `optimizer.lr=0.05` | 2/2 | 75.00 ± 7.07 | 75.00 ± 7.07 | 74.00 ± 7.07 "
        "| 0.9000 ± 0.1414 | — (0/2) | — | — | 2 ± 0 |"
    )
    assert table[4] == "| `optimizer.lr=0.5` | 0/2 | — | — | — | — | — (0/0) | — | — | — |"
    assert "Target accuracy for steps-to-target: 91.00%" in text
    assert (
        "![validation accuracy against steps and seconds, training loss](summary_curves.png)"
        in (text)
    )
    failed = text[text.index("## Failed or unfinished jobs") :]
    assert (
        "| 4 | `optimizer.lr=0.5 seed=0 debug=fast` | failed "
        "| RuntimeError: loss is NaN at step 12 |" in failed
    )
    assert "| 5 | `optimizer.lr=0.5 seed=1 debug=fast` | missing | no status.json" in failed


def test_curves_png_is_a_real_image(sweep: Path) -> None:
    path = summarize(sweep).curves_png
    assert path.name == "summary_curves.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def _clocked_job(sweep: Path, num: int, overrides: list[str], rate: float, val, **kw) -> Path:
    """A job as the runner writes it: train rows every 10 steps with seconds = rate * step,
    validation rows without a clock."""
    last = max(s for s, _ in val)
    steps = range(10, last + 1, 10)
    return make_job(
        sweep,
        num,
        overrides,
        val=val,
        train=[(s, 1.0) for s in steps],
        seconds={s: rate * s for s in steps},
        **kw,
    )


def test_time_to_target_in_seconds_and_as_a_fraction_of_the_baselines_time(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # the baseline takes 1 s a step and ends at 0.60 (mean of 0.58 and 0.62) at step 40 (40 s);
    # the other arm takes 1.2 s a step and passes 0.60 at its validation of step 20 (24 s)
    for seed, end in ((0, 0.58), (1, 0.62)):
        _clocked_job(sweep, seed, ["arm=sgd", f"seed={seed}"], 1.0, [(20, 0.4), (40, end)])
    for seed, mid in ((0, 0.61), (1, 0.65)):
        _clocked_job(sweep, 2 + seed, ["arm=new", f"seed={seed}"], 1.2, [(20, mid), (40, 0.7)])
    paths = summarize(sweep, baselines=["arm=sgd"])
    grouped = {r["config"]: r for r in read_csv(paths.grouped_csv)}
    new, sgd = grouped["arm=new"], grouped["arm=sgd"]
    assert num(new["target_acc"]) == pytest.approx(0.60)
    assert num(new["steps_to_target_mean"]) == 20
    assert num(new["seconds_to_target_mean"]) == pytest.approx(24.0)
    assert num(new["reference_seconds"]) == pytest.approx(40.0)
    assert num(new["seconds_to_target_ratio"]) == pytest.approx(0.6)
    assert num(new["run_seconds_mean"]) == pytest.approx(48.0)
    assert num(sgd["seconds_to_target_mean"]) == pytest.approx(40.0)  # seed 1 only, at its end
    assert sgd["steps_to_target_reached"] == "1/2"
    per_job = read_csv(paths.per_job_csv)
    assert [num(r["seconds_to_target"]) for r in per_job] == [None, 40.0, 24.0, 24.0]
    assert "| 20 ± 0 (2/2) | 24 ± 0 | 0.60x | 48 ± 0 |" in paths.markdown.read_text()


def test_a_resumed_jobs_clock_continues_where_the_cut_session_stopped(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # 2 s a step; killed after step 20 and resumed: the new process's clock starts again at 0
    seconds = {10: 20.0, 20: 40.0, 30: 25.0, 40: 45.0}
    make_job(
        sweep,
        0,
        ["seed=0"],
        val=[(25, 0.5), (40, 0.8)],
        train=[(s, 1.0) for s in seconds],
        seconds=seconds,
    )
    record = read_csv(summarize(sweep, target_acc=0.8).per_job_csv)[0]
    # step 30 continues at 40 + 2 * 10 = 60 s, step 40 is 20 s later
    assert num(record["run_seconds"]) == pytest.approx(80.0)
    assert num(record["seconds_to_target"]) == pytest.approx(80.0)
    early = read_csv(summarize(sweep, target_acc=0.5).per_job_csv)[0]
    assert num(early["seconds_to_target"]) == pytest.approx(50.0)  # step 25: between 40 and 60 s


def test_mean_band_pools_seeds_by_step() -> None:
    from brisk.sweep.jobs import Curve
    from brisk.sweep.plots import mean_band

    steps, mean, std = mean_band(
        [Curve([10, 20, 30], [0.5, 0.8, 0.9]), Curve([10, 20], [0.6, 0.85])]
    )
    assert steps == [10, 20, 30]
    assert mean == pytest.approx([0.55, 0.825, 0.9])
    assert std == pytest.approx([statistics.stdev([0.5, 0.6]), statistics.stdev([0.8, 0.85]), 0.0])


def test_broken_files_are_reported_not_fatal(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["seed=0"], val=[(10, 0.5)], train=[(5, 1.0)])
    bad_status = make_job(sweep, 1, ["seed=1"], val=[(10, 0.6)], train=[(5, 1.0)])
    (bad_status / "status.json").write_text('{"status": "ok", "best_val')  # truncated write
    bad_csv = make_job(sweep, 2, ["seed=2"], status="ok")
    (bad_csv / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    bad_overrides = make_job(sweep, 3, ["seed=3"], val=[(10, 0.7)], train=[(5, 1.0)])
    (bad_overrides / ".hydra" / "overrides.yaml").write_text("seed: [unclosed\n")
    paths = summarize(sweep)
    rows = read_csv(paths.per_job_csv)
    assert [r["status"] for r in rows] == ["ok", "unreadable", "ok", "ok"]
    assert "status.json unreadable" in rows[1]["error"]
    assert "lacks column(s) ['step', 'split']" in rows[2]["problems"]
    assert "overrides.yaml unreadable" in rows[3]["problems"]
    text = paths.markdown.read_text()
    assert "## Files that could not be read" in text
    assert "job 2:" in text and "metrics.csv lacks column" in text


def test_monitor_from_job_config_selects_the_metric_column(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        job = make_job(
            sweep, seed, [f"seed={seed}"], config={"seed": seed, "task": {"monitor": "video_acc1"}}
        )
        (job / "metrics.csv").write_text(
            "step,epoch,split,loss,acc1,lr,seconds,video_acc1\n"
            "5,0,train,1.0,,0.1,1,\n"
            f"10,0,val,1.0,0.4,,1,{0.6 + 0.1 * seed}\n"
        )
    rows = read_csv(summarize(sweep).grouped_csv)
    assert rows[0]["metric"] == "video_acc1"
    assert num(rows[0]["final_val_acc_mean"]) == pytest.approx(0.65)


def test_job_order_is_numeric_and_seed_falls_back_to_config(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for i in (10, 2, 0):
        make_job(
            sweep, i, [f"optimizer.lr={i}"], val=[(1, 0.5)], train=[(1, 1.0)], config={"seed": 7}
        )
    rows = read_csv(summarize(sweep).per_job_csv)
    assert [r["job"] for r in rows] == ["0", "2", "10"]
    assert {r["seed"] for r in rows} == {"7"}


def test_missing_or_empty_sweep_dir_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        summarize(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no job directories.*0/, 1/"):
        summarize(tmp_path / "empty")


def test_summarize_script(sweep: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep), "--target-acc", "0.8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| `optimizer.lr=0.1` | 2/2 |" in done.stdout
    assert "Target accuracy for steps-to-target: 80.00% (given)" in done.stdout
    grouped = read_csv(sweep / "summary_grouped.csv")
    assert num(grouped[0]["target_acc"]) == 0.8
    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    out_of_range = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep), "--target-acc", "91"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out_of_range.returncode == 2 and "fraction in [0, 1]" in out_of_range.stderr
    assert (
        json.loads((sweep / "0" / "status.json").read_text())["status"] == "ok"
    )  # inputs untouched


@pytest.mark.parametrize(
    "status",
    [
        # written now: the figures are named for the metric they hold
        {"status": "ok", "monitor": "video_acc1", "best_val_video_acc1": 0.5,
         "test_video_acc1": 0.25, "error": None},
        # written before the keys were named: acc1's keys held the monitored figure
        {"status": "ok", "best_val_acc1": 0.5, "test_acc1": 0.25, "error": None},
    ],
)  # fmt: skip
def test_status_figures_are_read_under_the_jobs_monitor(tmp_path: Path, status: dict) -> None:
    from brisk.sweep.jobs import read_job

    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (job / ".hydra" / "config.yaml").write_text("task:\n  monitor: video_acc1\nseed: 1\n")
    (job / "status.json").write_text(json.dumps(status))
    record = read_job(job, None)
    assert (record.status_best_val, record.final_test_acc) == (0.5, 0.25)
