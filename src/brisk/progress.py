"""Live progress bars for a person at a terminal; nothing at all anywhere else.

On a TTY, rank 0 shows one tqdm bar per epoch (images/s, the loss of the last logged window and the
epoch's ETA) and the log lines print above it; evaluation, data preparation and video generation
get a :class:`TaskProgress` bar by the same rules. Without a TTY (CI, SLURM, a file) the bars are
off and the output is the log lines alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal: a bar in a log file is only noise."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def is_rank_zero() -> bool:
    """Whether this is rank 0 of torchrun or srun, or a single process: the one that draws bars."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


_T = TypeVar("_T")


class TaskProgress:
    """A bar for one bounded piece of work beside training: evaluation batches, videos prepared
    or generated. Off unless ``stream`` is a terminal on rank 0 (every call is then a no-op);
    while on, log lines print above it. It disappears when closed."""

    def __init__(
        self, total: int | None, desc: str, unit: str, stream: IO[str] | None, enabled: bool = True
    ) -> None:
        self.bar: tqdm | None = None
        self._redirect: contextlib.ExitStack | None = None
        if enabled and is_rank_zero() and is_terminal(stream):
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger()]))
            self.bar = tqdm(
                total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=False
            )

    def __enter__(self) -> TaskProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        if self.bar is not None:
            self.bar.update(n)

    def iterate(self, items: Iterable[_T]) -> Iterator[_T]:
        """Yield ``items``, counting one unit as each is finished with (when the next is asked)."""
        for item in items:
            yield item
            self.update()

    def close(self) -> None:
        """Remove the bar and stop routing log lines through it; safe to call twice."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None


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
