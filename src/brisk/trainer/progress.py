"""A live per-epoch progress bar for a person at a terminal; nothing at all anywhere else.

On a TTY, rank 0 shows one tqdm bar per epoch (images/s, the loss of the last logged window and the
epoch's ETA) and the log lines print above it. Without a TTY (CI, SLURM, a file) the bar is off and
the output is the log lines alone, exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import IO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal: a bar in a log file is only noise."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


class EpochProgress:
    """One bar per epoch, counting images; ``enabled`` false makes every call a no-op."""

    def __init__(self, stream: IO[str] | None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled and is_terminal(stream)
        self.bar: tqdm | None = None

    @contextlib.contextmanager
    def logging_above(self) -> Iterator[None]:
        """Console log lines go through tqdm, so they print above the bar instead of through it."""
        if not self.enabled:
            yield
            return
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            yield

    def start(self, epoch: int, epochs: int, steps: int, done: int, batch: int) -> None:
        """A fresh bar for ``epoch``, starting at the ``done`` steps a resumed run already took."""
        if not self.enabled:
            return
        self.close()
        self.bar = tqdm(
            total=steps * batch,
            initial=done * batch,
            desc=f"epoch {epoch}/{epochs}",
            unit="img",
            unit_scale=True,
            file=self.stream,
            dynamic_ncols=True,
            leave=False,
        )

    def advance(self, images: int) -> None:
        """Count ``images`` more towards the epoch."""
        if self.bar is not None:
            self.bar.update(images)

    def show_loss(self, loss: float) -> None:
        """Show the latest loss now: called at logged steps only, so the redraw costs nothing."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        """Remove the bar (it does not stay on screen after its epoch)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
