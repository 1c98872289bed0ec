"""A distillation step never waits for the device: no ``.item()``, ``nonzero`` or copy to the CPU.

The training loop sums the loss parts on the device and reads them only at log steps; the teacher's
per-step path must keep to that. A :class:`TorchDispatchMode` records every op that makes the host
wait for the device, and the steps below (forward, gate, KL, feature mimicking, backward) must
record none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from brisk.teacher import RGBI3DTeacher, RGBMFNetTeacher, TeacherContext

aten = torch.ops.aten
CLASSES = 4
# ops that return a host value computed from device data, or that size their output by the data
SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.equal, aten.is_nonzero, aten.item}


class SyncDetector(TorchDispatchMode):
    """Records every op that would make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in SYNCING:
            self.syncs.append(str(func))
        elif _copies_to_cpu(packet, args, kwargs):
            self.syncs.append(f"{func} to the CPU")
        return func(*args, **kwargs)


def _copies_to_cpu(packet: Any, args: Any, kwargs: dict) -> bool:
    if packet is aten._to_copy:
        return _off_cpu(args[0]) and _cpu(kwargs.get("device"))
    return packet is aten.copy_ and _cpu(args[0].device) and _off_cpu(args[1])


def _cpu(device: Any) -> bool:
    return device is not None and torch.device(device).type == "cpu"


def _off_cpu(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu"


def _context(run_dir: Path) -> TeacherContext:
    return TeacherContext(
        run_dir,
        torch.device("cpu"),
        CLASSES,
        lambda model, _key, _stage: model,
        log=lambda _m: None,
    )


def test_the_detector_catches_what_waits() -> None:
    """The test below can fail: each of these is recorded."""
    t = torch.tensor([1.0, 0.0, 2.0])
    for wait in (
        lambda: t.sum().item(),
        lambda: bool(t.sum() > 0),
        lambda: float(t.mean()),
        lambda: t.nonzero(),
        lambda: torch.equal(t, t),
    ):
        with SyncDetector() as detector:
            wait()
        assert detector.syncs, wait


@pytest.mark.parametrize(
    ("cls", "layers"),
    [(RGBMFNetTeacher, {"conv5": "conv5"}), (RGBI3DTeacher, {"conv5": "Mixed_5c"})],
)
@pytest.mark.parametrize("gate", ["none", "correct", "confident"])
def test_distillation_steps_never_wait(
    tmp_path: Path, cls: type, layers: dict[str, str], gate: str
) -> None:
    from brisk.models import create_model

    teacher = cls(width_mult=0.25, gate=gate, beta=0.5, layers=layers)
    teacher.setup(_context(tmp_path))
    student = create_model("mfcd_net", num_classes=CLASSES, width_mult=0.25)
    teacher.attach(student)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    batch = {
        "input": torch.randn(4, 3, 4, 32, 32),
        "rgb": torch.rand(4, 3, 4, 32, 32),
        "target": torch.tensor([0, 1, 2, 3]),
    }
    sums: dict[str, torch.Tensor] = {}
    with SyncDetector() as detector:
        for _ in range(4):  # the adapters' check runs at the third step
            out = student(batch["input"])
            loss, parts = teacher.loss(out, batch, F.cross_entropy(out, batch["target"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for key, value in parts.items():
                assert isinstance(value, torch.Tensor) and value.dim() == 0, key
                sums[key] = sums.get(key, torch.zeros(())) + value
    assert detector.syncs == []
    assert {"distill/ce", "distill/kl", "distill/feat"} <= set(sums)
    assert ("distill/followed" in sums) == (gate != "none")
    # read at a log step, the parts are the loss's own figures
    assert all(torch.isfinite(v) for v in sums.values())
