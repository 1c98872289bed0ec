"""Layer selection, cadence, guards, logging, checkpoint state and mixed precision."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from tests.whitening.helpers import batches, clone, grouped_conv_net, linear_net, sgd, train
from torch import nn

from brisk.errors import UserError
from brisk.whitening import EVDWhitening, FeatureWhitening, RecursiveWhitening

ALGORITHMS = [EVDWhitening, FeatureWhitening, RecursiveWhitening]


def test_selection_by_type_pattern_and_size() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.Linear(8, 8)),
        nn.Conv2d(8, 200, 5),  # M = 8*25 = 200
        nn.Linear(200, 4),
    )
    w = EVDWhitening(layer_types=["Conv2d", "Linear"], exclude=["1.*"], max_dim=150)
    w.attach(model)
    assert [layer.name for layer in w.layers] == ["0"]
    assert w.skipped == {
        "1.0": "excluded",
        "1.1": "excluded",
        "2": "M=200 > max_dim=150",
        "3": "M=200 > max_dim=150",
    }
    w.detach()
    w = EVDWhitening(layer_types=["Linear"], include=["3"], max_dim=4096)
    w.attach(model)
    assert [layer.name for layer in w.layers] == ["3"]
    assert w.metrics()["whiten/skipped_layers"] == 1.0  # "1.1" is a Linear but not included


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stats_every": 0}, "whitening.stats_every"),
        ({"eps": -1}, "whitening.eps"),
        ({"layer_types": ["Conv4d"]}, "whitening.layer_types"),
        ({"decomposition_dtype": "float16"}, "whitening.decomposition_dtype"),
        ({"momentum": 1.0}, "whitening.momentum"),
        ({"stats_max_rows": 0}, "whitening.stats_max_rows"),
    ],
)
def test_bad_configuration_names_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        EVDWhitening(nn.Linear(2, 2), **kwargs)


def test_cadence_statistics_refresh_and_start_step() -> None:
    model = linear_net()
    w = EVDWhitening(stats_every=2, inverse_every=4, start_step=3)
    w.attach(model)
    data = batches((7,), 4)
    updates, refreshes, changed = [], [], []
    for step in range(9):
        before = [p.detach().clone() for p in model.parameters()]
        train(model, w, data, 1, start=step)
        updates.append(w.layers[0].stats.updates)
        refreshes.append(w.layers[0].refreshes)
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, model.parameters())))
    assert updates == [1, 1, 2, 2, 3, 3, 4, 4, 5]
    # first refresh at start_step 3, then at multiples of inverse_every
    assert refreshes == [0, 0, 0, 1, 2, 2, 2, 2, 3]


def test_no_statistics_in_eval_mode_or_without_grad() -> None:
    model = linear_net()
    w = EVDWhitening()
    w.attach(model)
    w.begin_step(0)
    x = batches((7,), 4)[0][0]
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    assert not any(layer.stats.pending for layer in w.layers)


def test_failed_decomposition_keeps_the_previous_preconditioner(monkeypatch) -> None:
    model = linear_net()
    w = EVDWhitening(inverse_every=1)
    w.attach(model)
    data = batches((7,), 4)
    train(model, w, data, 2)
    kept = [layer.state.q.clone() for layer in w.layers]

    def broken(a, *args, **kwargs):  # the factorisation fails in every dtype
        return torch.zeros_like(a), torch.ones(a.shape[:-2], dtype=torch.int32)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", broken)
    losses, _ = train(model, w, data, 2, start=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    for layer, q in zip(w.layers, kept):
        torch.testing.assert_close(layer.state.q, q)
    with pytest.warns(RuntimeWarning, match="layer 0's damped covariance") as caught:
        assert w.metrics()["whiten/fallbacks"] == 2 * len(w.layers)
    # once per layer, naming it, and not again at the next log line
    assert sum("layer 2's" in str(c.message) for c in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w.metrics()


def test_a_float64_retry_is_counted_and_said(monkeypatch) -> None:
    """The float32 factor fails, the float64 retry succeeds: whitened as usual, and counted."""
    model = linear_net().float()
    reference = EVDWhitening(inverse_every=1)
    w = EVDWhitening(inverse_every=1)
    twin = copy.deepcopy(model)
    reference.attach(twin)
    w.attach(model)
    data = [(x.float(), y) for x, y in batches((7,), 4)]
    train(twin, reference, data, 2)
    real = torch.linalg.cholesky_ex

    def float32_fails(a, *args, **kwargs):
        factor, info = real(a, *args, **kwargs)
        return (factor, torch.ones_like(info)) if a.dtype == torch.float32 else (factor, info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", float32_fails)
    train(model, w, data, 2)
    for a, b in zip(w.layers, reference.layers):
        torch.testing.assert_close(a.state.q, b.state.q, rtol=1e-4, atol=1e-5)
    with pytest.warns(RuntimeWarning, match="2 rescued by a float64 retry, 0 not"):
        m = w.metrics()
    assert m["whiten/float64_retries"] == 2 * len(w.layers) and m["whiten/fallbacks"] == 0


def test_singular_covariance_does_not_crash() -> None:
    """Constant inputs: R = 0; damping floors it and training goes on."""
    model = nn.Linear(5, 2).double()
    w = EVDWhitening(inverse_every=1)
    w.attach(model)
    x = torch.ones(8, 5, dtype=torch.float64)
    data = [(x, torch.zeros(8, dtype=torch.long))]
    losses, _ = train(model, w, data, 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert w.metrics()["whiten/fallbacks"] == 0


def test_metrics_keys_and_timers_reset() -> None:
    model = grouped_conv_net()
    w = EVDWhitening(condition_every=1)
    w.attach(model)
    train(model, w, batches((4, 9, 9), 5), 2)
    m = w.metrics()
    assert m["whiten/seconds_logging"] > 0
    for name in ("0", "3"):
        assert m[f"whiten/kappa_R/{name}"] >= m[f"whiten/kappa_white/{name}"] >= 1.0
    assert m["whiten/seconds_stats"] > 0 and m["whiten/seconds_decomposition"] > 0
    assert m["whiten/seconds_transform"] > 0
    assert w.metrics()["whiten/seconds_stats"] == 0.0
    assert all(isinstance(v, float) for v in m.values())


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.name)
def test_resume_reproduces_the_uninterrupted_run(cls) -> None:
    base = grouped_conv_net()
    data = batches((4, 9, 9), 5)
    kw = {"inverse_every": 3, "stats_every": 2, "stats_max_rows": 30}

    full = clone(base)
    w_full = cls(**kw)
    w_full.attach(full)
    losses_full, _ = train(full, w_full, data, 10)

    first = clone(base)
    w1 = cls(**kw)
    w1.attach(first)
    losses_a, opt1 = train(first, w1, data, 5)
    buffer = io.BytesIO()
    torch.save(
        {"model": first.state_dict(), "opt": opt1.state_dict(), "w": w1.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    second = grouped_conv_net()
    w2 = cls(**kw)
    w2.attach(second)
    second.load_state_dict(saved["model"])
    opt2 = sgd(second, 1e-2)
    opt2.load_state_dict(saved["opt"])
    w2.load_state_dict(saved["w"])
    losses_b, _ = train(second, w2, data, 5, start=5, optimizer=opt2)
    assert losses_a + losses_b == pytest.approx(losses_full, rel=0, abs=1e-12)
    for p, q in zip(full.parameters(), second.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_state_of_another_algorithm_is_refused() -> None:
    model = linear_net()
    evd = EVDWhitening()
    evd.attach(model)
    rec = RecursiveWhitening()
    rec.attach(clone(model))
    with pytest.raises(ValueError, match="'evd'"):
        rec.load_state_dict(evd.state_dict())


@pytest.mark.parametrize("cls", [EVDWhitening, RecursiveWhitening], ids=lambda c: c.name)
def test_bf16_autocast_keeps_statistics_in_float32(cls) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)
    )
    w = cls(inverse_every=1)
    w.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(4, (8,))
    for step in range(3):
        w.begin_step(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        w.precondition(step)
        opt.step()
    for layer in w.layers:
        assert layer.stats.cov.dtype == torch.float32
        assert layer.state.q.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_adamw_composes() -> None:
    model = linear_net()
    w = RecursiveWhitening(inverse_every=2)
    w.attach(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, _ = train(model, w, batches((7,), 4), 24, optimizer=opt)
    assert sum(losses[-6:]) < sum(losses[:6])  # same six batches, later epoch


def test_detach_removes_hooks() -> None:
    model = linear_net()
    w = EVDWhitening()
    w.attach(model)
    with pytest.raises(RuntimeError, match="already attached"):
        w.attach(model)
    w.detach()
    w.begin_step(0)
    model(batches((7,), 4)[0][0]).sum().backward()
    assert not any(layer.stats.pending for layer in w.layers)


@pytest.mark.parametrize("algorithm", [EVDWhitening, RecursiveWhitening])
def test_inputs_of_magnitude_1e12_are_whitened_without_error(algorithm) -> None:
    """recursive used to raise from eigh at about 3e10; every algorithm must take it."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    w = algorithm(lin)
    lin(torch.rand(256, 64) * 1e12).sum().backward()
    raw = lin.weight.grad.clone()
    w.step()
    assert torch.isfinite(lin.weight.grad).all() and torch.isfinite(lin.bias.grad).all()
    assert not torch.allclose(lin.weight.grad, raw)  # whitened, not skipped


def test_tiny_inputs_are_whitened_like_large_ones() -> None:
    """The damping floor is relative: inputs of size 1e-6 get the same normalised Q as the same
    inputs at size 1 (an absolute floor of 1e-12 left them nearly unwhitened)."""
    qs = []
    for scale in (1.0, 1e-6):
        model = nn.Linear(6, 2).double()
        w = EVDWhitening(model)
        data = [(x * scale, y) for x, y in batches((6,), 2, n=1, batch=64)]
        train(model, w, data, 1)
        qs.append(w.layers[0].state.q)
    torch.testing.assert_close(qs[1], qs[0], rtol=1e-6, atol=1e-9)


def test_a_layer_whose_statistics_are_always_rejected_is_reported() -> None:
    model = linear_net()
    w = EVDWhitening(model, stats_every=1, inverse_every=1)
    first = w.layers[0]
    first.adapter.rows = lambda x, *args: torch.full((4, 1, 7), float("nan"), dtype=x.dtype)
    train(model, w, batches((7,), 4), 3)
    assert w.unfed_layers() == [first.name]
    with pytest.warns(RuntimeWarning, match=f"every statistics batch of {first.name} was rejected"):
        m = w.metrics()
    assert m["whiten/rejected_stats"] == 3
