"""Typed per-layer state: each algorithm's fields and checkpoint round trips."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.whitening.helpers import batches, linear_net, train

from brisk.whitening import EVDWhitening, FeatureWhitening, RecursiveWhitening
from brisk.whitening.state import FeatureState, GradientState, RecursiveState

CASES = [
    (EVDWhitening, GradientState, {"q", "mu"}),
    (RecursiveWhitening, RecursiveState, {"q", "mu"}),
    (FeatureWhitening, FeatureState, {"p", "p_inv", "mu"}),
]


def _fitted(algorithm):
    model = linear_net()
    w = algorithm(model, eps=0.1, stats_every=1, inverse_every=1)
    train(model, w, batches((7,), 4, n=3), 1)
    return model, w


@pytest.mark.parametrize(("algorithm", "state_type", "names"), CASES)
def test_each_algorithm_keeps_its_typed_state(algorithm, state_type, names) -> None:
    _, w = _fitted(algorithm)
    for layer in w.layers:
        assert type(layer.state) is state_type
        saved = w.state_dict()["layers"][layer.name]["state"]
        assert set(saved) == names
        first = "p" if algorithm is FeatureWhitening else "q"
        assert isinstance(saved[first], torch.Tensor)  # refreshed by the training above


@pytest.mark.parametrize(("algorithm", "state_type", "names"), CASES)
def test_a_checkpoint_restores_the_state_exactly(algorithm, state_type, names) -> None:
    """Symmetric matrices are stored as triangles: unpacked, they are the same bits."""
    model, w = _fitted(algorithm)
    saved = copy.deepcopy(w.state_dict())
    fresh = algorithm(copy.deepcopy(model), eps=0.1, stats_every=1, inverse_every=1)
    fresh.load_state_dict(saved)
    for old, new in zip(w.layers, fresh.layers):
        torch.testing.assert_close(new.stats.cov, old.stats.cov, rtol=0, atol=0)
        for name, value in old.state.to_dict().items():
            torch.testing.assert_close(getattr(new.state, name), value, rtol=0, atol=0)


def test_a_state_missing_a_field_is_refused_naming_it() -> None:
    model, w = _fitted(RecursiveWhitening)
    saved = copy.deepcopy(w.state_dict())
    del next(iter(saved["layers"].values()))["state"]["mu"]
    fresh = RecursiveWhitening(copy.deepcopy(model), eps=0.1, stats_every=1, inverse_every=1)
    with pytest.raises(ValueError, match="'mu'"):
        fresh.load_state_dict(saved)
