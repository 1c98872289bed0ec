"""Optimizer construction: weight decay only on weights of convolutions and linear layers.

Decaying biases and normalisation parameters hurts accuracy (timm, torchvision references) and, for
whitening, decay in whitened coordinates maps to plain decay of W alone (docs/whitening.md).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only: biases and normalisation parameters
    (1-D) are left undecayed.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(factory: Callable[..., Optimizer], model: nn.Module) -> Optimizer:
    """``factory`` is the partially instantiated ``cfg.optimizer``.

    A factory marked ``takes_model`` (``optimizer=muon``) is given the model itself, because it
    splits the parameters by the layer they belong to, not only by their shape.
    """
    if getattr(getattr(factory, "func", factory), "takes_model", False):
        return factory(model)
    weight_decay = getattr(factory, "keywords", {}).get("weight_decay", 0.0)
    return factory(param_groups(model, weight_decay))
