"""Optimizers: parameter groups with decay only where it belongs, and Muon with its auxiliary."""
