"""The contract between the trainer loop and a teacher-student (distillation) module.

Built with ``hydra.utils.instantiate(cfg.teacher)``. The loop computes the student's ordinary loss
and hands it, with the student's output and the whole batch, to :meth:`Teacher.loss`, which returns
the loss to optimise; the ``none`` teacher returns it unchanged. A teacher that has to be trained
first (stage 1) does so in :meth:`Teacher.setup` through the ``fit`` callable the runner passes in,
so the same loop, logging and checkpointing serve both stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from brisk.whitening.base import Whitening


@dataclass
class TeacherContext:
    """What a teacher may use while it gets ready.

    ``fit(model, input_key, stage)`` trains ``model`` with the runner's own loop on the batches'
    field ``input_key`` (for example ``"rgb"``), checkpointing under ``run_dir / stage``; it returns
    the model with its best weights and skips the work when that stage already finished in this run
    directory.
    """

    run_dir: Path
    device: torch.device
    num_classes: int
    fit: Callable[[nn.Module, str, str], nn.Module]
    log: Callable[[str], None] = print


class Teacher:
    """Base class and the ``teacher=none`` implementation.

    The runner reads these attributes and properties, which subclasses set or override:
    ``model`` (the frozen network once set up, None for no teacher), ``input_key`` (the batch field
    it reads), ``whitening`` (the preconditioner of its stage-1 training, None for plain SGD) and
    ``epochs`` (length of stage 1; None trains for ``trainer.epochs``).
    """

    name: str = "none"
    model: nn.Module | None = None
    whitening: Whitening | None = None

    @property
    def input_key(self) -> str:
        """The batch field the teacher reads; the student's own input for no teacher."""
        return "input"

    @property
    def epochs(self) -> int | None:
        """Length of stage 1; None trains for ``trainer.epochs``."""
        return None

    def setup(self, context: TeacherContext) -> None:
        """Load or train the teacher before the student's training starts."""

    def stage_optimizer(self) -> dict[str, float]:
        """Stage 1's own optimizer values (``lr``, ``weight_decay``) over the run's ``optimizer``.

        A teacher fitted from scratch in a short run needs other settings than the student it
        teaches; empty keeps the run's.
        """
        return {}

    def stage_scheduler(self) -> dict[str, float]:
        """Stage 1's own schedule values (``warmup_epochs``) over the run's ``scheduler``."""
        return {}

    def attach(self, student: nn.Module) -> None:
        """Register hooks on the student (feature mimicking); called after :meth:`setup`."""

    def loss(
        self, student_out: Tensor, batch: dict[str, Any], hard_loss: Tensor
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The loss to optimise and named scalar parts of it for the logs.

        Return the parts as detached 0-d tensors rather than floats: the loop sums them on the
        device and reads them only at log steps, so a step never waits for the device.
        """
        return hard_loss, {}

    def state_dict(self) -> dict[str, Any]:
        """What the teacher carries across a resume, saved in the run checkpoint (nothing here)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume; a teacher may refuse state that is not its own."""
        pass


class NoTeacher(Teacher):
    """Train the student on the labels alone."""
