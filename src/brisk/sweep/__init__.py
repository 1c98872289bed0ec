"""Sweeps: the summary of a multirun directory (``summary``, read through ``jobs``, drawn by
``plots``) and the Hydra callback that writes it while the sweep runs."""

from brisk.sweep.summary import SummaryPaths, summarize

__all__ = ["SummaryPaths", "summarize"]
