"""The public API in a plain PyTorch loop: the README snippet, step counting, forgotten calls,
gradient accumulation, and weight decay wired from the optimizer that steps each layer."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from tests.whitening.helpers import batches, clone, linear_net, sgd, train
from torch import nn

from brisk.whitening import EVDWhitening, FeatureWhitening, RecursiveWhitening

ROOT = Path(__file__).resolve().parents[2]


def _snippet(path: Path) -> str:
    """The python block of the section that shows ``whitening.step()``."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    found = [b for b in blocks if "whitening.step()" in b and "import" in b]
    assert found, f"no whitening snippet in {path}"
    return found[0]


def test_readme_snippet_runs_as_written_and_whitens() -> None:
    code = _snippet(ROOT / "README.md")
    assert code == _snippet(ROOT / "docs" / "whitening.md")  # the docs show the same snippet
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no forgotten-call warning either
        exec(compile(code, "README.md", "exec"), namespace)
    w = namespace["whitening"]
    assert isinstance(w, RecursiveWhitening) and [la.name for la in w.layers] == ["0", "3"]
    assert all(layer.refreshes == 3 for layer in w.layers)  # steps 0, 10, 20 at the defaults
    assert all(layer.stats.updates == 3 for layer in w.layers)


@pytest.mark.parametrize("cls", [EVDWhitening, RecursiveWhitening, FeatureWhitening])
def test_step_counts_itself_like_the_runner_hooks(cls) -> None:
    """``step()`` alone gives the same run as the runner's ``begin_step``/``precondition``."""
    base, data = linear_net(), batches((7,), 4)
    kw = {"stats_every": 2, "inverse_every": 3, "stats_max_rows": None}
    runner = clone(base)
    w_runner = cls(runner, **kw)
    losses_runner, _ = train(runner, w_runner, data, 7)
    plain = clone(base)
    w_plain = cls(plain, **kw)
    opt = sgd(plain, 1e-2)
    losses = []
    for step in range(7):
        x, y = data[step % len(data)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(plain(x), y)
        loss.backward()
        w_plain.step()
        opt.step()
        losses.append(loss.item())
    assert losses == pytest.approx(losses_runner, rel=0, abs=1e-12)
    assert [la.stats.updates for la in w_plain.layers] == [4, 4]  # steps 0, 2, 4, 6
    assert [la.refreshes for la in w_plain.layers] == [3, 3]  # steps 0, 3, 6


def test_a_forgotten_step_warns_and_still_whitens() -> None:
    base, data = linear_net(), batches((7,), 4)
    reference = clone(base)
    w_ref = EVDWhitening(reference, stats_every=1, inverse_every=2)
    opt_ref = sgd(reference, 1e-2)
    forgetful = clone(base)
    w = EVDWhitening(forgetful, stats_every=1, inverse_every=2)
    opt = sgd(forgetful, 1e-2)
    for step in range(4):
        x, y = data[step]
        for model, whitening, optimizer in ((reference, w_ref, opt_ref), (forgetful, None, opt)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if whitening is not None:
                whitening.step()
            if whitening is None and step == 0:
                with pytest.warns(RuntimeWarning, match="before whitening.step"):
                    optimizer.step()
            else:
                optimizer.step()
    assert [la.refreshes for la in w.layers] == [2, 2]
    for p, q in zip(reference.parameters(), forgetful.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_a_second_step_call_is_ignored_with_a_warning() -> None:
    model = linear_net()
    w = EVDWhitening(model, stats_every=1)
    x, y = batches((7,), 4)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    w.step()
    grad = model[0].weight.grad.clone()
    with pytest.warns(RuntimeWarning, match="without a training forward pass"):
        w.step()
    assert torch.equal(model[0].weight.grad, grad)


@pytest.mark.parametrize("cls", [EVDWhitening, RecursiveWhitening])
def test_gradient_accumulation_equals_the_full_batch(cls) -> None:
    """Two micro-batches of 8, one ``step()``: the statistics and the transformed gradient of one
    batch of 16 (the sums are pooled before they are folded in)."""
    base = linear_net()
    (x, y), _ = batches((7,), 4, n=2, batch=16)
    kw = {"stats_every": 1, "inverse_every": 1, "stats_max_rows": None}
    full = clone(base)
    w_full = cls(full, **kw)
    nn.functional.cross_entropy(full(x), y).backward()
    w_full.step()
    acc = clone(base)
    w_acc = cls(acc, **kw)
    for part in (slice(0, 8), slice(8, 16)):
        (nn.functional.cross_entropy(acc(x[part]), y[part]) / 2).backward()
    w_acc.step()
    for a, b in zip(w_full.layers, w_acc.layers):
        assert a.stats.updates == b.stats.updates == 1
        torch.testing.assert_close(a.stats.cov, b.stats.cov, rtol=0, atol=1e-12)
    for p, q in zip(full.parameters(), acc.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ weight decay wiring
def _decay_only_step(model: nn.Module, whitening, optimizer, x: torch.Tensor) -> None:
    """A step whose loss gradient is zero: only the optimizer's weight decay moves anything."""
    optimizer.zero_grad()
    (0.0 * model(x).sum()).backward()
    whitening.step()
    optimizer.step()


@pytest.mark.parametrize("unpaired", [None, 0.0])
def test_adamw_decay_of_whitened_weights_moves_the_bias_as_feature_whitening_does(
    unpaired: float | None,
) -> None:
    """AdamW decays ``W~`` but not ``b~``; in plain coordinates ``b = b~ - W mu`` moves.  Read from
    the optimizer (``None``), evd follows feature whitening; forcing 0 does not."""
    base = nn.Sequential(nn.Linear(5, 3)).double()
    x = batches((5,), 3)[0][0]  # offset inputs: mu is far from 0
    kw = {"stats_every": 1, "inverse_every": 1, "stats_max_rows": None, "eps": 0.1}
    outs = []
    for cls, extra in ((FeatureWhitening, {}), (EVDWhitening, {"unpaired_weight_decay": unpaired})):
        model = clone(base)
        w = cls(model, **kw, **extra)
        groups = [
            {"params": [model[0].weight], "weight_decay": 0.5},
            {"params": [model[0].bias], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=0.1)
        for _ in range(3):
            _decay_only_step(model, w, opt, x)
        with torch.no_grad():
            outs.append(model(x))
    matches = torch.allclose(outs[0], outs[1], rtol=0, atol=1e-10)
    assert matches == (unpaired is None)


@pytest.mark.parametrize("grouping", ["runner", "plain"])
def test_sgd_decay_is_read_from_the_optimizer_groups(grouping: str) -> None:
    """SGD with decay on weights only (the runner) or on everything (a plain ``parameters()``):
    evd with the decay read from the optimizer stays equal to feature whitening."""
    base, data = linear_net(), batches((7,), 4)
    losses = []
    models = []
    for cls in (FeatureWhitening, EVDWhitening):
        model = clone(base)
        w = cls(model, eps=0.05, stats_every=1, inverse_every=3)
        if grouping == "runner":
            opt = sgd(model, 5e-2)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-2)
        run, _ = train(model, w, data, 10, optimizer=opt)
        w.detach()
        losses.append(run)
        models.append(model)
    assert max(abs(a - b) for a, b in zip(*losses)) < 1e-9
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-9)


class _FunctionalHead(nn.Module):
    """A model that uses its classifier's weight through ``F.linear``: the module never runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.body, self.head = nn.Linear(7, 9), nn.Linear(9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(torch.tanh(self.body(x)), self.head.weight, self.head.bias)


@pytest.mark.parametrize("cls", [EVDWhitening, RecursiveWhitening, FeatureWhitening])
def test_a_layer_whose_hooks_never_run_is_named_not_silently_left_unwhitened(cls) -> None:
    model = _FunctionalHead().double()
    whitening = cls(model, stats_every=1, inverse_every=1)
    assert [layer.name for layer in whitening.layers] == ["body", "head"]
    x, y = batches((7,), 4)[0]
    with pytest.warns(RuntimeWarning, match=r"1 of 2 whitened layers .*not whitened: head\."):
        nn.functional.cross_entropy(model(x), y).backward()
        whitening.step()
    assert whitening.unfed_layers() == ["head"]
    # said once, not at every step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        whitening.step()


def test_layers_fed_on_statistics_steps_only_are_not_reported() -> None:
    model = linear_net()
    whitening = EVDWhitening(model, stats_every=3, inverse_every=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in batches((7,), 4)[:4]:
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            whitening.step()
    assert whitening.unfed_layers() == []


_MODEL_INPUTS = {
    "resnet20": ({}, (2, 3, 32, 32)),
    "resnet18": ({}, (2, 3, 64, 64)),
    "resnet50": ({}, (2, 3, 64, 64)),
    "small_cnn": ({}, (2, 1, 16, 16)),
    "mfcd_net": ({"width_mult": 0.25}, (2, 3, 12, 32, 32)),
    "mfnet_rgb": ({"width_mult": 0.25}, (2, 3, 16, 32, 32)),
    "i3d": ({"width_mult": 0.25}, (2, 3, 16, 32, 32)),
    "coviar": ({}, (2, 5, 2, 32, 32)),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "coviar" else n  # three ResNets, ~15 s
        for n in sorted(_MODEL_INPUTS)
    ],
)
def test_every_registry_model_feeds_every_whitened_layer(name: str) -> None:
    from brisk.models import create_model, list_models

    assert set(_MODEL_INPUTS) == set(list_models()) - {
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
    }
    kwargs, shape = _MODEL_INPUTS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs)
    whitening = EVDWhitening(model, start_step=10**6)  # statistics only: no decomposition
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model(torch.randn(*shape)).sum().backward()
        whitening.step()
    assert whitening.layers and whitening.unfed_layers() == []


def test_transformer_layers_feed_every_whitened_layer() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2), nn.Flatten(), nn.Linear(32 * 5, 3))
    whitening = EVDWhitening(model)
    assert len(whitening.layers) == 7  # per layer out_proj, linear1, linear2; the classifier
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model(torch.randn(4, 5, 32)).sum().backward()
        whitening.step()
    assert whitening.unfed_layers() == []


def test_print_shows_the_selection_table_without_logging(capsys: pytest.CaptureFixture) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
    )
    whitening = RecursiveWhitening(model)
    print(whitening)
    shown = capsys.readouterr().out
    assert shown.startswith("whitening 'recursive': 2 of 2 candidate modules whitened\n")
    assert whitening.selection_table() in shown and "Conv2d  27" in shown
    assert "not attached" in str(RecursiveWhitening())
    assert "print(whitening)" in _snippet(ROOT / "README.md")  # the README says so
