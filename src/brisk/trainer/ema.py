"""An exponential moving average of the model's weights (``trainer.ema``), evaluated beside them.

Built on torch's own machinery: :class:`torch.optim.swa_utils.AveragedModel` holds the averaged
copy and :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` updates it after every optimizer
step. ``use_buffers=True`` averages the batch-norm running statistics too, so the averaged weights
are evaluated with averaged statistics rather than the raw model's (no extra pass over the data).

The decay warms up as ``decay * (1 - exp(-t / warmup_steps))`` after ``t`` optimizer steps (the
form of YOLOv5's ModelEMA): early on, when the weights move fast, the average follows them closely
instead of dragging the random initialisation along; ``warmup_steps=0`` uses ``decay`` from the
first step.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# metric names of the averaged weights: val/ema_acc1 beside val/acc1
PREFIX = "ema_"


def ema_decay(decay: float, warmup_steps: int, step: int) -> float:
    """The decay applied at optimizer step ``step`` (1-based): ``decay`` after the warm-up."""
    if warmup_steps <= 0:
        return decay
    return decay * (1.0 - math.exp(-step / warmup_steps))


class ModelEMA:
    """The averaged copy of ``model`` and how it is updated, saved and restored.

    The copy is taken without the model's forward and backward hooks: whitening statistics and a
    teacher's feature hooks belong to the trained model, and an evaluation of the average must not
    feed them.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int) -> None:
        self.decay, self.warmup_steps = decay, warmup_steps
        self.averaged = AveragedModel(
            _without_hooks(model),
            multi_avg_fn=get_ema_multi_avg_fn(decay),
            use_buffers=True,
        )
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged network, called like the model itself."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s weights and buffers in after optimizer step ``step`` (1-based)."""
        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(
            ema_decay(self.decay, self.warmup_steps, step)
        )
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights, buffers and update count (plain tensors, weights_only-loadable)."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.averaged.load_state_dict(state)

    def restart_from(self, model: nn.Module) -> None:
        """Start the average afresh at ``model``'s weights (a checkpoint that carries none)."""
        self.averaged.module.load_state_dict(model.state_dict())
        self.averaged.n_averaged.zero_()


def _without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose modules carry no forward or backward hooks.

    The hook dictionaries are mapped to empty ones through ``deepcopy``'s memo, so neither the
    hooks nor the objects their bound methods belong to (a whitening, a teacher) are copied.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if name.endswith(("hooks", "hooks_with_kwargs", "hooks_always_called")) and (
                name.startswith(("_forward", "_backward"))
            ):
                memo[id(value)] = type(value)()
    return copy.deepcopy(model, memo)
