"""Process-level facts every package asks about, in one place: imports only torch.

``whitening/`` and ``video/`` may import this module without depending on the trainer.
"""

from __future__ import annotations

import math

import torch


def is_distributed() -> bool:
    """Whether a process group is up: collectives are then needed and allowed."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def format_duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s`` for logs and ETAs; ``?`` when the duration is unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
