"""A timm-style model registry: ``@register_model`` on a factory, ``create_model(name, ...)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model '{fn.__name__}' registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names ``model.name`` accepts, sorted; quoted in the error for an unknown name."""
    return sorted(_MODELS)


def create_model(name: str, checkpoint: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model; unknown names list the valid ones.

    ``checkpoint`` (``model.checkpoint=PATH``) starts the network from saved weights, published or a
    brisk run's (:mod:`brisk.models.pretrained`): how every published video result begins.
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model '{name}'; registered models: {', '.join(list_models())}")
    model = _MODELS[name](**kwargs)
    if checkpoint:
        from brisk.models.pretrained import load_model_checkpoint

        load_model_checkpoint(model, checkpoint)
    return model
