"""Whitening algorithms that precondition layer gradients (arXiv 2010.01546 and our
reconstruction)."""

from brisk.whitening.base import NoWhitening, Whitening
from brisk.whitening.evd import EVDWhitening
from brisk.whitening.feature import FeatureWhitening
from brisk.whitening.gradient import GradientWhitening
from brisk.whitening.orchestrator import LayerWhitening
from brisk.whitening.recursive import RecursiveWhitening

__all__ = [
    "EVDWhitening",
    "FeatureWhitening",
    "GradientWhitening",
    "LayerWhitening",
    "NoWhitening",
    "RecursiveWhitening",
    "Whitening",
]
