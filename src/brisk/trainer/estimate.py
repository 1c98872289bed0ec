"""What a run will cost, said once after its first steps: total steps, seconds a step, duration.

``train task=cifar`` runs 160 epochs by default, many hours on a small CPU; the per-step log lines
show an ETA, but only every ``log_every`` steps and without the whole. :class:`DurationEstimate`
times the steps after the first (which pays for allocations, kernel selection and loader start-up)
and logs one line as soon as it has ``measure_steps`` of them or ``max_wait`` seconds have passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from brisk.runtime import format_duration


class DurationEstimate:
    """Times this session's steps ``2 .. 1 + measure_steps`` and says what the run costs.

    ``sync`` waits for the device (CUDA steps run asynchronously); it is called twice per run.
    """

    def __init__(
        self,
        total_steps: int,
        steps_per_epoch: int,
        epochs: int,
        start_step: int,
        sync: Callable[[], None] = lambda: None,
        measure_steps: int = 5,
        max_wait: float = 30.0,
    ) -> None:
        self.total_steps, self.steps_per_epoch, self.epochs = total_steps, steps_per_epoch, epochs
        self.start_step = start_step
        self.sync, self.measure_steps, self.max_wait = sync, measure_steps, max_wait
        self._session_steps = 0
        self._t0: float | None = None
        self.done = total_steps - start_step <= 1  # nothing worth estimating

    def step_done(self) -> str | None:
        """Call after every optimizer step; returns the estimate once, then always None."""
        if self.done:
            return None
        self._session_steps += 1
        if self._session_steps == 1:  # the first step is warm-up: time from its end
            self.sync()
            self._t0 = time.perf_counter()
            return None
        assert self._t0 is not None
        timed = self._session_steps - 1
        waited = time.perf_counter() - self._t0
        if timed < self.measure_steps and waited < self.max_wait:
            return None
        self.sync()
        per_step = (time.perf_counter() - self._t0) / timed
        self.done = True
        return self.message(per_step, first=self.start_step + 2, last=self.start_step + 1 + timed)

    def message(self, per_step: float, first: int, last: int) -> str:
        """The log line for ``per_step`` seconds a step, measured over steps ``first..last``."""
        total = self.total_steps
        if total == self.steps_per_epoch * self.epochs:
            length = f"{self.epochs} epochs x {self.steps_per_epoch} steps"
        else:
            length = "trainer.max_steps"
        left = total - (self.start_step + self._session_steps)
        text = (
            f"this run: {total:,} steps ({length}) at {per_step:.3f} s/step (steps {first}-{last}),"
            f" about {format_duration(per_step * total)} of training"
        )
        if self.start_step:
            text += f", {left:,} steps left: {format_duration(per_step * left)}"
        ends = datetime.now() + timedelta(seconds=per_step * left)
        return f"{text} (validation and test not included); ends around {ends:%Y-%m-%d %H:%M}"
