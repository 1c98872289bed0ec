"""Optuna on SLURM: trials run as parallel SLURM jobs and are recorded in one study, stored in a
SQLite file under the sweep directory (``hydra.sweeper.storage``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.slurm.conftest import slurm_train, submitted_arrays

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def test_four_trials_as_two_parallel_jobs_share_one_study(
    slurm_cluster: None, tmp_path: Path
) -> None:
    optuna = pytest.importorskip("optuna")
    proc = slurm_train(
        "+hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "debug=fast",
        f"hydra.sweep.dir={tmp_path}",
    )
    output = proc.stdout + proc.stderr
    # two submissions, each an array of two jobs that run at once
    assert [a.split("%")[0] for a in submitted_arrays(tmp_path)] == ["0-1", "0-1"], output
    database = tmp_path / "optuna.db"  # the configured default: sqlite:///${hydra.sweep.dir}/...
    assert database.is_file(), output
    study = optuna.load_study(study_name="brisk_optimizer", storage=f"sqlite:///{database}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 4
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    assert (tmp_path / "optimization_results.yaml").is_file()
    assert (tmp_path / "summary.csv").is_file()
