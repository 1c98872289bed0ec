"""brisk's models, slowed down: a preemption test needs a training step to take long enough to be
caught in the middle of an epoch. The sleep changes no number, so the weights stay those of
``brisk.models.create_model`` with the same arguments."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from brisk.models import create_model


def slow_model(delay_s: float = 0.0, label: str = "", **kwargs: Any) -> nn.Module:
    """``create_model(**kwargs)`` whose training forward passes first sleep ``delay_s`` seconds.

    ``label`` changes nothing: a sweep over it runs copies of one configuration as separate jobs.
    """
    model = create_model(**kwargs)

    def pause(module: nn.Module, args: Any) -> None:
        if module.training and delay_s > 0:
            time.sleep(delay_s)

    model.register_forward_pre_hook(pause)
    return model
