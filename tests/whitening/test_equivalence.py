"""The gradient transform (evd) is classical feature whitening, step for step, in float64.

Both run the same cadence (statistics every step or every other step, sub-sampled or not,
refreshes inside the run), SGD with momentum (heavy ball and Nesterov) and weight decay on weights
only, as the runner builds it.  Feature whitening keeps its weights in whitened coordinates, so the
comparison maps them back (``detach``) before comparing parameters.
"""

from __future__ import annotations

import pytest
import torch
from tests.whitening.helpers import batches, clone, conv3d_net, grouped_conv_net, linear_net, train

from brisk.whitening import EVDWhitening, FeatureWhitening

NETS = {
    "linear_with_bias": (linear_net, (7,), 4),
    "conv2d_stride2_pad_dil2_groups2": (grouped_conv_net, (4, 9, 9), 5),
    "conv3d_batchnorm": (conv3d_net, (2, 4, 5, 5), 3),
}
WD = 1e-2


def _pair(net_name: str, steps: int, nesterov: bool = False, **kw):
    make, shape, classes = NETS[net_name]
    data = batches(shape, classes)
    base = make()
    results = []
    for cls in (EVDWhitening, FeatureWhitening):
        extra = {"unpaired_weight_decay": WD} if cls is EVDWhitening else {}
        model = clone(base)
        whitening = cls(eps=0.05, inverse_every=3, **{"stats_every": 1, **kw}, **extra)
        whitening.attach(model)
        losses, _ = train(model, whitening, data, steps, weight_decay=WD, nesterov=nesterov)
        whitening.detach()
        results.append((losses, model, whitening))
    return base, results


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("steps", [1, 20])
def test_evd_equals_feature_whitening(net_name: str, steps: int) -> None:
    base, ((loss_e, model_e, w_e), (loss_f, model_f, _)) = _pair(net_name, steps)
    assert max(abs(a - b) for a, b in zip(loss_e, loss_f)) < 1e-6
    for (name, p_e), p_f, p_0 in zip(
        model_e.named_parameters(), model_f.parameters(), base.parameters()
    ):
        torch.testing.assert_close(p_e, p_f, rtol=0, atol=1e-6, msg=name)
        assert not torch.allclose(p_e, p_0), f"{name} did not train"
    assert w_e.layers and all(layer.refreshes > 0 for layer in w_e.layers)


def test_equivalence_with_nesterov_subsampling_and_sparse_statistics() -> None:
    _, ((loss_e, model_e, _), (loss_f, model_f, _)) = _pair(
        "conv2d_stride2_pad_dil2_groups2", 20, nesterov=True, stats_every=2, stats_max_rows=40
    )
    assert max(abs(a - b) for a, b in zip(loss_e, loss_f)) < 1e-6
    for p_e, p_f in zip(model_e.parameters(), model_f.parameters()):
        torch.testing.assert_close(p_e, p_f, rtol=0, atol=1e-6)


def test_whitening_changes_the_trajectory_against_plain_sgd() -> None:
    """Guards the tests above against comparing two no-ops."""
    make, shape, classes = NETS["linear_with_bias"]
    data = batches(shape, classes)
    base = make()
    plain = clone(base)
    loss_plain, _ = train(plain, EVDWhitening(start_step=10**6), data, 10)
    white = clone(base)
    w = EVDWhitening(eps=0.05)
    w.attach(white)
    loss_white, _ = train(white, w, data, 10)
    assert abs(loss_plain[-1] - loss_white[-1]) > 1e-3


def test_feature_whitening_keeps_the_network_function_on_refresh() -> None:
    make, shape, classes = NETS["conv2d_stride2_pad_dil2_groups2"]
    data = batches(shape, classes)
    model = make()
    w = FeatureWhitening(eps=0.05, inverse_every=1)
    w.attach(model)
    x = data[0][0]
    model.eval()
    before = model(x)
    model.train()
    w.begin_step(0)
    model(data[1][0])  # gathers statistics and refreshes P in the forward pass
    model.eval()
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    assert w.layers[0].state.p is not None
    w.detach()
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
