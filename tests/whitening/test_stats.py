"""Patch rows reproduce what each layer multiplies; running covariances equal the batch formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brisk.whitening.adapters import make_adapter
from brisk.whitening.covariance import CovarianceGroup


def _stats(groups: int, dim: int, momentum: float, center: bool = True, dtype=None):
    """One layer's statistics: a group with a single member."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    return CovarianceGroup(dim, [groups], momentum, center, **kwargs).member(0)


def commit_all(stats) -> None:
    for s in stats:
        s.group.fold()


CONVS = [
    nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
    nn.Conv1d(3, 4, 4, padding="same", padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
    nn.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=(1, 0), padding_mode="circular"),
    nn.Conv2d(3, 4, 4, padding="same", dilation=(1, 2), padding_mode="replicate"),
    nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
    nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 2), padding=1, dilation=(1, 1, 2)),
    nn.Conv3d(4, 2, 1, groups=2),
]


def _input(module: nn.Module) -> torch.Tensor:
    shape = {1: (3, 9), 2: (3, 8, 9), 3: (2, 4, 7, 8)}[len(module.kernel_size)]
    return torch.randn(shape[0], module.in_channels, *shape[1:], dtype=torch.float64)


@pytest.mark.parametrize("module", CONVS, ids=lambda m: repr(m))
def test_conv_rows_times_weight_is_the_convolution(module: nn.Module) -> None:
    module = module.double()
    x = _input(module)
    adapter = make_adapter(module)
    rows = adapter.rows(x)  # (N, G, M)
    w = adapter.weight_matrix(module.weight)  # (G, S_g, M)
    y = torch.einsum("ngm,gsm->ngs", rows, w).reshape(rows.shape[0], -1) + module.bias
    torch.testing.assert_close(adapter.output_from_rows(y, x), module(x), rtol=1e-12, atol=1e-12)
    assert adapter.num_rows(x) == rows.shape[0]


def test_unbatched_conv_input() -> None:
    module = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    adapter = make_adapter(module)
    rows = adapter.rows(x)
    y = rows[:, 0] @ module.weight.reshape(4, -1).T + module.bias
    torch.testing.assert_close(adapter.output_from_rows(y, x), module(x))


def test_linear_rows_flatten_leading_dims() -> None:
    module = nn.Linear(5, 3).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    rows = make_adapter(module).rows(x)
    assert rows.shape == (8, 1, 5)
    torch.testing.assert_close(rows[:, 0], x.reshape(8, 5))


def test_subsampled_rows_are_rows_of_the_full_set() -> None:
    module = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    x = _input(module)
    adapter = make_adapter(module)
    full = adapter.rows(x).reshape(-1, 2 * adapter.dim)
    g = torch.Generator().manual_seed(0)
    sub = adapter.rows(x, max_rows=7, generator=g).reshape(-1, 2 * adapter.dim)
    assert sub.shape[0] == 7
    dists = torch.cdist(sub, full)
    assert torch.all(dists.min(1).values < 1e-6)  # cdist uses the |a|^2+|b|^2-2ab form
    # enough rows: no sampling at all, the exact set
    torch.testing.assert_close(
        adapter.rows(x, max_rows=10**6, generator=g).reshape(full.shape), full
    )


def test_unsupported_layer_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="ConvTranspose2d"):
        make_adapter(nn.ConvTranspose2d(2, 2, 3))


def test_running_covariance_is_centred_covariance_then_ema() -> None:
    a = torch.randn(50, 1, 4, dtype=torch.float64) * 2 + 3
    b = torch.randn(30, 1, 4, dtype=torch.float64)
    stats = _stats(groups=1, dim=4, momentum=0.75)
    stats.accumulate(a[:20])
    stats.accumulate(a[20:])  # micro-batches of one step add up
    commit_all([stats])
    cov_a = torch.cov(a[:, 0].T, correction=0)
    torch.testing.assert_close(stats.cov[0], cov_a)
    torch.testing.assert_close(stats.trace[0], cov_a.trace())
    stats.accumulate(b)
    commit_all([stats])
    cov_b = torch.cov(b[:, 0].T, correction=0)
    torch.testing.assert_close(stats.cov[0], 0.75 * cov_a + 0.25 * cov_b)
    torch.testing.assert_close(stats.mean[0], 0.75 * a.mean((0, 1)) + 0.25 * b.mean((0, 1)))


def test_non_finite_batch_is_rejected_and_counted() -> None:
    stats = _stats(groups=1, dim=3, momentum=0.5)
    stats.accumulate(torch.randn(10, 1, 3))
    commit_all([stats])
    before = stats.cov.clone()
    bad = torch.randn(10, 1, 3)
    bad[3, 0, 1] = float("nan")
    stats.accumulate(bad)
    commit_all([stats])
    assert stats.rejected == 1 and stats.updates == 1
    torch.testing.assert_close(stats.cov, before)


def test_float64_statistics_of_float32_rows_are_exact_in_double() -> None:
    rows = (torch.randn(400, 1, 6) * 0.1 + 5.0).float()  # a large mean: float32 sums lose digits
    double = _stats(groups=1, dim=6, momentum=0.5, dtype=torch.float64)
    single = _stats(groups=1, dim=6, momentum=0.5)
    for stats in (double, single):
        stats.accumulate(rows[:150])  # split like two ranks' shares
        stats.accumulate(rows[150:])
        commit_all([stats])
    exact = torch.cov(rows[:, 0].double().T, correction=0)
    assert double.cov.dtype == torch.float64 and single.cov.dtype == torch.float32
    torch.testing.assert_close(double.cov[0], exact, rtol=1e-12, atol=1e-14)


def test_half_precision_rows_accumulate_in_float32() -> None:
    stats = _stats(groups=1, dim=3, momentum=0.5)
    stats.accumulate(torch.randn(10, 1, 3).to(torch.bfloat16))
    commit_all([stats])
    assert stats.cov.dtype == torch.float32


def test_a_group_folds_its_members_independently() -> None:
    """Two layers of one size in one stacked buffer: each folds its own rows, a non-finite batch
    of one is rejected without touching the other, and a member without rows is left alone."""
    group = CovarianceGroup(3, [1, 2], momentum=0.5, dtype=torch.float64)
    a, b = group.member(0), group.member(1)
    xa = torch.randn(20, 1, 3, dtype=torch.float64)
    xb = torch.randn(30, 2, 3, dtype=torch.float64) + 1
    a.accumulate(xa)
    b.accumulate(xb)
    group.fold()
    torch.testing.assert_close(a.cov[0], torch.cov(xa[:, 0].T, correction=0))
    for g in range(2):
        torch.testing.assert_close(b.cov[g], torch.cov(xb[:, g].T, correction=0))
    kept = b.cov.clone()
    bad = xb.clone()
    bad[0, 1, 0] = float("inf")  # one group of member b: the whole layer's batch is rejected
    b.accumulate(bad)
    group.fold()
    torch.testing.assert_close(b.cov, kept)
    assert (int(a.updates), int(a.rejected), int(b.updates), int(b.rejected)) == (1, 0, 1, 1)


def test_float32_covariance_survives_a_large_mean() -> None:
    """Post-ReLU-like inputs: mean 100x the spread; the shifted sums keep the small eigenvalues."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(400, 1, 6, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 6) + 100
    stats = _stats(groups=1, dim=6, momentum=0.5)
    for _ in range(2):
        stats.accumulate(x64.float())
        commit_all([stats])
    exact = torch.linalg.eigvalsh(torch.cov(x64[:, 0].T, correction=0))
    got = torch.linalg.eigvalsh(stats.cov[0].double())
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=0)


def test_uncentred_second_moment() -> None:
    rows = torch.randn(30, 1, 3, dtype=torch.float64) + 2
    stats = _stats(groups=1, dim=3, momentum=0.5, center=False)
    stats.accumulate(rows)
    commit_all([stats])
    torch.testing.assert_close(stats.cov[0], rows[:, 0].T @ rows[:, 0] / 30)
    torch.testing.assert_close(stats.trace[0], rows.square().sum() / 30)
    torch.testing.assert_close(stats.mean[0], torch.zeros(3, dtype=torch.float64))
