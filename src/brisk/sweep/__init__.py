"""Sweeps: summaries of a multirun directory, the Hydra callback that writes them, and the
TensorBoard hparams record each job leaves for the HParams dashboard."""

from brisk.sweep.summary import SummaryPaths, summarize

__all__ = ["SummaryPaths", "summarize"]
