"""brisk: an experiment runner for cheap feature whitening and compressed-domain action
recognition."""

__version__ = "0.1.0"
