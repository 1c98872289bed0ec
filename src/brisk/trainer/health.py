"""Signs that a run has gone wrong although its numbers are still finite, and honest messages.

A cross-entropy loss starts near ln(C) for C classes and falls. A loss thousands of times larger
(1e13 with BatchNorm at lr 1000) means the weights are diverging, but it is finite, so the NaN check
does not fire and the run would go on reporting meaningless numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

from brisk.errors import UserError

# How many times the chance-level loss ln(C) a logged training loss may reach before we warn.
DIVERGENCE_FACTOR = 1000.0


def divergence_warning(loss: float, step: int, num_classes: int) -> str | None:
    """A warning when a finite training loss is far above any loss a learning run produces."""
    limit = DIVERGENCE_FACTOR * max(1.0, math.log(max(num_classes, 2)))
    if not math.isfinite(loss) or loss <= limit:
        return None
    return (
        f"training loss {loss:.3g} at step {step} is over {DIVERGENCE_FACTOR:g}x the chance level "
        f"ln({num_classes}) = {math.log(max(num_classes, 2)):.2f}: the run is diverging; lower "
        "optimizer.lr, set trainer.grad_clip, or raise the whitening eps"
    )


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite: a setting to change (the learning rate, the
    whitening eps), reported in one line naming the step and the last good checkpoint."""


def nonfinite_loss_message(loss: float, step: int, last_checkpoint: Path) -> str:
    """The error for a NaN/inf loss; names the last good checkpoint only when there is one."""
    where = (
        f"last good checkpoint: {last_checkpoint}; init_from={last_checkpoint} starts from it"
        if last_checkpoint.is_file()
        else "no checkpoint was written before it"
    )
    return (
        f"training loss became {loss} at step {step}: lower optimizer.lr, raise whitening eps, "
        f"or check the inputs ({where})"
    )
