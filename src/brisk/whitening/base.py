"""The contract between the trainer loop and a whitening algorithm.

The loop never knows which algorithm runs: it builds one with
``hydra.utils.instantiate(cfg.whitening)`` and calls the hooks below at fixed points of every
training step. An algorithm owns its forward hooks (statistics), its state and its per-layer
adapters; the optimizer is left untouched, as in K-FAC preconditioners, so any ``torch.optim``
optimizer composes with any whitening.

Order inside one training step (see ``brisk.trainer.loop``)::

    whitening.begin_step(step)      # decide whether this step collects statistics
    loss = criterion(model(x), y)   # forward hooks of the algorithm see the layer inputs
    loss.backward()                 # (DDP has all-reduced the gradients when this returns)
    scaler.unscale_(optimizer)      # AMP only: gradients back in true scale
    whitening.precondition(step)    # rewrite p.grad of the whitened layers in place
    optimizer.step()
"""

from __future__ import annotations

from typing import Any

from torch import nn


class Whitening:
    """Base class and the ``whitening=none`` implementation: every hook is a no-op."""

    name: str = "none"

    def attach(self, model: nn.Module) -> None:
        """Register hooks on ``model`` (the unwrapped module, never the DDP wrapper)."""

    def detach(self) -> None:
        """Remove every hook registered by :meth:`attach`."""

    def begin_step(self, step: int) -> None:
        """Called before the forward pass of global training step ``step`` (0-based)."""

    def precondition(self, step: int) -> None:
        """Transform the gradients of the whitened layers; called before ``optimizer.step()``."""

    def metrics(self) -> dict[str, float]:
        """Scalars to log since the last call (condition numbers, seconds spent, fallbacks)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state (tensors, numbers, strings), so ``weights_only`` loading reads it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after :meth:`attach`."""


class NoWhitening(Whitening):
    """Plain training: the runner's default."""
