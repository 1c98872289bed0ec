"""A Hydra callback that keeps ``summary.*`` up to date in the sweep directory of ``train -m``.

Registered in ``conf/hydra/default.yaml``::

    callbacks:
      sweep_summary:
        _target_: brisk.sweep.callback.SweepSummary

Why two hooks: Hydra calls ``on_multirun_end`` only when every job succeeded. When one job raises,
the basic sweeper re-raises that error after the batch has run, and ``on_multirun_end`` never
comes. The summary is therefore refreshed after every job of a multirun (``on_job_end``), so a
sweep with failures still ends with a summary that lists them, and a long sweep can be watched
while it runs. ``on_job_end`` runs where the job runs (a joblib worker, a SLURM node), so the
writes are atomic renames; ``on_multirun_end`` writes the final version on the submitting side.
A summary that cannot be written is logged, never raised: it must not turn a good sweep into a
failed one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from brisk.sweep.summary import DEFAULT_BASELINES, summarize

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Write the sweep summary after each job of a multirun and once more at its end."""

    def __init__(
        self,
        target_acc: float | None = None,
        group_ignore: Sequence[str] = (),
        baselines: Sequence[str] = DEFAULT_BASELINES,
        metric: str | None = None,
        refresh_each_job: bool = True,
    ) -> None:
        self.kwargs: dict[str, Any] = {
            "target_acc": target_acc,
            "group_ignore": list(group_ignore),
            "baselines": list(baselines),
            "metric": metric,
        }
        self.refresh_each_job = refresh_each_job

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """With ``refresh_each_job`` the summary is rewritten after every job, so a long sweep can
        be read while it runs.
        """
        if self.refresh_each_job and _is_multirun(config):
            self._summarize(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the sweep summary once all jobs have ended and log where it is."""
        path = self._summarize(config)
        if path is not None:
            log.info("sweep summary: %s", path)

    def _summarize(self, config: DictConfig) -> Path | None:
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir")
        if sweep_dir is None:
            log.warning("sweep summary skipped: the config has no hydra.sweep.dir")
            return None
        try:
            return summarize(sweep_dir, **self.kwargs).markdown
        except Exception:
            log.exception("could not write the sweep summary for %s", sweep_dir)
            return None


def _is_multirun(config: DictConfig) -> bool:
    mode = OmegaConf.select(config, "hydra.mode")
    return mode is not None and str(getattr(mode, "name", mode)) == "MULTIRUN"


def summarize_sweep(config: DictConfig) -> None:
    """Run the sweep-summary callback of ``config`` (if configured) as at the end of a sweep."""
    spec = OmegaConf.select(config, "hydra.callbacks.sweep_summary")
    if spec is None:
        return
    try:
        callback = instantiate(spec)
    except Exception:
        log.exception("could not build the sweep-summary callback")
        return
    callback.on_multirun_end(config)
