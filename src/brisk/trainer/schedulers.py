"""Learning-rate schedules stepped once per optimizer step, with an optional linear warm-up.

Configs name these with ``_partial_: true``; the runner completes them with the optimizer and the
training length (``total_steps`` honours ``trainer.max_steps``), known only once the data set is
loaded.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def warmup_cosine(
    optimizer: Optimizer,
    steps_per_epoch: int,
    total_steps: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` of the peak
    at ``total_steps``; stepped per optimizer step, so it does not depend on the epoch length.
    """
    total = max(1, total_steps)
    warmup = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup(step, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_multistep(
    optimizer: Optimizer,
    steps_per_epoch: int,
    total_steps: int,
    warmup_epochs: float = 0.0,
    milestones: list[float] | tuple[float, ...] = (0.5, 0.75),
    gamma: float = 0.1,
) -> LambdaLR:
    """Linear warm-up, then the lr times ``gamma`` at each milestone, given as fractions of
    ``total_steps`` so the schedule scales with the run's length.
    """
    total = max(1, total_steps)
    warmup = round(warmup_epochs * steps_per_epoch)
    bounds = sorted(round(m * total) for m in milestones)

    def factor(step: int) -> float:
        return _warmup(step, warmup) * gamma ** sum(step >= b for b in bounds)

    return LambdaLR(optimizer, factor)
