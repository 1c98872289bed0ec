"""Every layer that should be whitened is whitened exactly once, and the others are reported."""

from __future__ import annotations

import logging

import pytest
import torch
from tests.whitening.helpers import batches, train
from torch import nn

from brisk.whitening import EVDWhitening, FeatureWhitening, RecursiveWhitening
from brisk.whitening.adapters import block_count, make_adapter
from brisk.whitening.distributed import assign_by_cost


def _centred_cov(rows: torch.Tensor) -> torch.Tensor:
    d = rows - rows.mean(0)
    return d.T @ d / rows.shape[0]


class _Tied(nn.Module):
    """Two Linear modules sharing one weight Parameter (and each its own bias)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 6, bias=bias)
        self.b = nn.Linear(6, 6, bias=bias)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _inputs_of(model: nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [
        dict(model.named_modules())[n].register_forward_pre_hook(
            lambda m, a: seen.append(a[0].detach().clone())
        )
        for n in names
    ]
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_a_shared_weight_is_whitened_once_from_pooled_statistics() -> None:
    model = _Tied(bias=False).double()
    w = EVDWhitening(model, stats_every=1, inverse_every=1, stats_max_rows=None)
    assert [layer.name for layer in w.layers] == ["a", "head"]
    assert [name for name, _, _ in w.layers[0].aliases] == ["b"]
    x, y = batches((6,), 3, n=1)[0]
    pooled = torch.cat(_inputs_of(model, ["a", "b"], x))
    nn.functional.cross_entropy(model(x), y).backward()
    raw = model.a.weight.grad.clone()
    w.step()
    layer = w.layers[0]
    torch.testing.assert_close(layer.stats.cov[0], _centred_cov(pooled), rtol=0, atol=1e-12)
    # transformed once: G Q, not G Q Q
    torch.testing.assert_close(model.a.weight.grad, raw @ layer.state.q[0], rtol=0, atol=1e-12)


def test_shared_weight_with_biases_trains_and_feature_refuses_it() -> None:
    model = _Tied(bias=True).double()
    w = RecursiveWhitening(model, stats_every=1, inverse_every=1)
    losses, _ = train(model, w, batches((6,), 3), 6)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(w.layers[0].biases) == 2
    f = FeatureWhitening(_Tied(bias=True).double())
    assert [layer.name for layer in f.layers] == ["head"]
    assert f.skipped == {"a": "shares its weight with b", "b": "shares its weight with a"}


def test_a_module_called_twice_per_forward_pools_both_calls() -> None:
    lin = nn.Linear(4, 4).double()
    model = nn.Sequential(lin, nn.Tanh(), lin)
    w = EVDWhitening(model, stats_every=1, stats_max_rows=None)
    x = torch.randn(10, 4, dtype=torch.float64)
    model(x).sum().backward()
    w.step()
    assert len(w.layers) == 1 and w.layers[0].stats.updates == 1
    assert w.layers[0].stats.cov is not None


def test_frozen_layers_are_skipped_entirely() -> None:
    model = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    model[0].requires_grad_(False)
    w = EVDWhitening(model)
    assert [layer.name for layer in w.layers] == ["2"]
    assert w.skipped == {"0": "frozen (requires_grad=False)"}
    assert all(layer.module is not model[0] for layer in w.layers)


def test_subclasses_are_whitened_and_attention_in_proj_is_reported() -> None:
    class MyConv(nn.Conv2d):
        pass

    model = nn.ModuleDict({"conv": MyConv(3, 4, 3), "attn": nn.MultiheadAttention(8, 2)})
    w = RecursiveWhitening(model)
    assert sorted(layer.name for layer in w.layers) == ["attn.out_proj", "conv"]
    assert "in_proj_weight" in w.skipped["attn"]
    x = torch.randn(5, 2, 8)  # (T, B, E)
    out, _ = model["attn"](x, x, x)
    out.sum().backward()
    w.step()
    layer = w.layers[[la.name for la in w.layers].index("attn.out_proj")]
    assert layer.stats.updates == 1  # the attention never calls out_proj: rows are recomputed
    z = layer.adapter.layer_input((x, x, x), {})
    proj = model["attn"].out_proj
    torch.testing.assert_close(z @ proj.weight.T + proj.bias, out.detach(), rtol=0, atol=1e-5)


def test_block_count_prefers_whole_channels_and_never_drops_a_layer() -> None:
    assert block_count(4608, 4096, unit=9) == 2  # ResNet-50's 512x3x3 convolutions
    assert block_count(4608, 1024, unit=9) == 8  # 64 channels x 9 taps per block
    assert block_count(4096, 4096, unit=9) == 1
    assert block_count(4099, 4096) == 4099  # a prime M: diagonal, still whitened


@pytest.mark.parametrize("bias", [False, True])
def test_block_diagonal_covariance_and_transform(bias: bool) -> None:
    """M = 8*3*3 = 72 above max_block 40: 2 blocks of 4 whole channels; G <- [G_1 Q_1, G_2 Q_2]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 5, 3, bias=bias), nn.Flatten()).double()
    w = EVDWhitening(model, max_block=40, stats_every=1, stats_max_rows=None)
    layer = w.layers[0]
    assert (layer.adapter.groups, layer.adapter.blocks, layer.adapter.dim) == (2, 2, 36)
    x = 2.0 * torch.randn(6, 8, 5, 5, dtype=torch.float64) + 1.0
    model(x).square().sum().backward()
    g = model[0].weight.grad.reshape(5, 72).clone()
    gb = model[0].bias.grad.clone() if bias else None
    w.step()
    full = _centred_cov(make_adapter(model[0]).rows(x)[:, 0])
    q, mu = layer.state.q, layer.state.mu
    for k in range(2):
        cols = slice(36 * k, 36 * (k + 1))
        torch.testing.assert_close(layer.stats.cov[k], full[cols, cols], rtol=0, atol=1e-10)
    expected, shift = [], torch.zeros(5, dtype=torch.float64)
    for k in range(2):
        gk = g[:, 36 * k : 36 * (k + 1)]
        if bias:
            gk = gk - gb[:, None] * mu[k][None, :]
        expected.append(gk @ q[k])
        shift += expected[-1] @ mu[k]
    got = model[0].weight.grad.reshape(5, 72)
    torch.testing.assert_close(got, torch.cat(expected, 1), rtol=0, atol=1e-10)
    if bias:
        torch.testing.assert_close(model[0].bias.grad, gb - shift, rtol=0, atol=1e-10)


def test_feature_whitening_does_not_block() -> None:
    model = nn.Sequential(nn.Conv2d(8, 5, 3), nn.Flatten())
    f = FeatureWhitening(model, max_block=40)
    assert f.layers == [] and "max_block=40" in f.skipped["0"]


def test_start_up_table_lists_every_candidate(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.ModuleDict(
        {
            "big": nn.Conv2d(8, 5, 3),
            "frozen": nn.Linear(4, 4).requires_grad_(False),
            "up": nn.ConvTranspose2d(3, 3, 2),
            "attn": nn.MultiheadAttention(8, 2),
        }
    )
    with caplog.at_level(logging.INFO, logger="brisk.whitening"):
        w = EVDWhitening(model, max_block=40, exclude=["attn.*"])
    text = caplog.text
    assert "2 of 6 candidate modules whitened" not in text  # only big is whitened
    assert "1 of 5 candidate modules whitened" in text
    for fragment in (
        "big",
        "1 x 2 of 36",
        "frozen (requires_grad=False)",
        "transposed convolution",
        "in_proj_weight",
        "excluded",
    ):
        assert fragment in text, fragment
    assert w.selection_table() in text


def test_resnet50_loses_no_layer_and_blocks_its_widest_convolutions() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50()
    w = EVDWhitening(model)
    assert w.skipped == {}
    assert len(w.layers) == 54  # 53 convolutions and the fc
    blocked = {layer.name: layer.adapter for layer in w.layers if layer.adapter.blocks > 1}
    assert sorted(blocked) == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    assert all((a.blocks, a.dim) == (2, 2304) for a in blocked.values())


def test_cost_balanced_assignment() -> None:
    assert assign_by_cost([8, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [0] + [1] * 8
    costs = [float(m) ** 3 for m in (4608, 2304, 2304, 1152, 576, 576, 576, 147, 64)]
    owners = assign_by_cost(costs, 3)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(3)]
    assert max(loads) <= sum(costs) / 3 + max(costs)  # the greedy rule's bound
    assert assign_by_cost(costs, 1) == [0] * len(costs)
