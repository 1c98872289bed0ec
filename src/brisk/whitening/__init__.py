"""Whitening algorithms that precondition layer gradients (arXiv 2010.01546 and our reconstruction)."""

from brisk.whitening.base import NoWhitening, Whitening

__all__ = ["NoWhitening", "Whitening"]
