"""Learning-rate schedules: warm-up, cosine to the floor, step decay at fractions of the run."""

from __future__ import annotations

import pytest
import torch

from brisk.trainer.schedulers import warmup_cosine, warmup_multistep


def _lrs(factory, steps: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = factory(opt, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_warms_up_linearly_then_decays_to_the_floor() -> None:
    lrs = _lrs(
        warmup_cosine, 100, steps_per_epoch=10, total_steps=100, warmup_epochs=1, min_lr_ratio=0.1
    )
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_multistep_milestones_are_fractions_of_total_steps() -> None:
    lrs = _lrs(
        warmup_multistep,
        100,
        steps_per_epoch=10,
        total_steps=100,
        milestones=[0.5, 0.75],
        gamma=0.1,
    )
    assert (
        lrs[49] == pytest.approx(1.0)
        and lrs[50] == pytest.approx(0.1)
        and lrs[75] == pytest.approx(0.01)
    )
