"""What a training step waits for and what it launches, measured by operator (not by timing).

Two instruments, both usable on the CPU so that CI can hold the line without an accelerator:

* :class:`SyncDetector`, a ``TorchDispatchMode`` that records every operator that makes the host
  wait for a device: reading a scalar (``.item()``, ``bool(t)``, ``float(t)``: all
  ``aten._local_scalar_dense``), operators whose output size depends on the data (``nonzero``,
  ``masked_select``, ``unique``), copies from a device to the CPU, and linear algebra that checks
  its ``info`` result on the host (``linalg.cholesky``, ``cholesky_inverse``, ``linalg.eigh``,
  ``linalg.inv``, ``linalg.solve``; their ``_ex`` forms return ``info`` as a tensor and are fine).
  The operators are the same on every device, so a step that passes on the CPU makes no such wait
  on a GPU either; a copy to the CPU can only be seen where there is another device.
* :func:`count_compute_ops`, ``torch.profiler`` on the CPU counting leaf ``aten`` operators that
  compute (views, reshapes and allocations excluded), a stand-in for the kernels a GPU step
  launches. A ``_foreach_*`` operator counts once: on the CPU it loops over its tensors, on a GPU
  it is one fused launch per chunk of tensors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "SyncDetector", "count_compute_ops"]

# operators that block the host until the device has produced a value
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",
        "item",
        "is_nonzero",
        "equal",
        "allclose",
        "nonzero",
        "nonzero_static",
        "masked_select",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        # linear algebra whose info is checked on the host (raises on failure)
        "_linalg_check_errors",
        "linalg_cholesky",
        "cholesky",
        "cholesky_inverse",
        "_linalg_eigh",
        "linalg_eigh",
        "linalg_eigvalsh",
        "linalg_inv",
        "linalg_solve",
        "_linalg_solve_ex",  # checks only when asked; counted if called with check_errors
    }
)


def _op_name(func: Any) -> str:
    return func._schema.name.split("::")[-1]


class SyncDetector(TorchDispatchMode):
    """Records the host synchronisations of the code run under it, by operator.

    ``with SyncDetector() as syncs: ...`` then ``syncs.events`` is a ``Counter`` of operator names
    (``"copy to cpu"`` for a device-to-host copy) and ``syncs.total`` their number.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """How many synchronisations were recorded."""
        return sum(self.events.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        name = _op_name(func)
        if name in SYNC_OPS and not (name == "_linalg_solve_ex" and not kwargs.get("check_errors")):
            self.events[name] += 1
        elif name in ("_to_copy", "copy_", "_copy_from", "to") and _copies_to_cpu(
            name, args, kwargs
        ):
            self.events["copy to cpu"] += 1
        return func(*args, **kwargs)


def _copies_to_cpu(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a copy moves data from an accelerator to the host."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors:
        return False
    if name == "copy_":  # copy_(dst, src)
        return len(tensors) > 1 and tensors[0].is_cpu and not tensors[1].is_cpu
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cpu" and not tensors[0].is_cpu


# profiler names that do not compute: views, metadata and allocations
_NOT_COMPUTE = frozenset(
    {
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::view",
        "aten::_unsafe_view",
        "aten::reshape",
        "aten::_reshape_alias",
        "aten::as_strided",
        "aten::transpose",
        "aten::t",
        "aten::permute",
        "aten::expand",
        "aten::expand_as",
        "aten::slice",
        "aten::select",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::detach",
        "aten::detach_",
        "aten::alias",
        "aten::lift_fresh",
        "aten::resize_",
        "aten::set_",
        "aten::unfold",
        "aten::diagonal",
        "aten::split",
        "aten::split_with_sizes",
        "aten::unbind",
        "aten::chunk",
        "aten::narrow",
        "aten::view_as",
        "aten::flatten",
        "aten::unflatten",
        "aten::movedim",
        "aten::contiguous",  # a copy shows as its own aten::copy_/clone child
        "aten::to",
        "aten::_to_copy",  # the copy it makes shows as aten::copy_
        "aten::result_type",
        "aten::is_nonzero",
        "aten::item",
        "aten::_local_scalar_dense",
        "aten::size",
        "aten::stride",
        "aten::numel",
        "aten::dim",
        "aten::record_stream",
        "aten::zeros",  # fill shows as aten::zero_ / fill_
        "aten::ones",
        "aten::full",
        "aten::new_empty",
        "aten::new_empty_strided",
        "aten::new_zeros",
        "aten::_has_compatible_shallow_copy_type",
        "aten::numpy_T",
        "aten::mT",
        "aten::adjoint",
        "aten::as_strided_",
        "aten::resolve_conj",  # real tensors: metadata only
        "aten::resolve_neg",
        "aten::scalar_tensor",  # a Python number wrapped for an operator: no kernel
        "aten::is_same_size",
    }
)


def count_compute_ops(fn: Callable[[], None]) -> Counter[str]:
    """Run ``fn`` under the CPU profiler; return the leaf compute operators it ran, by name.

    A leaf is an ``aten`` event with no computing ``aten`` event inside it (composite operators
    count as what they run); ``_foreach_*`` operators count once, whatever they run inside.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    counts: Counter[str] = Counter()

    def visit(event: Any) -> int:
        """Count ``event``'s compute leaves; an operator whose inner operators are all views or
        allocations counts as one itself (a ``bmm`` that only resolves conjugation views)."""
        name = event.name
        if name.startswith("aten::_foreach_"):
            counts[name] += 1
            return 1
        inner = sum(visit(c) for c in event.cpu_children if c.name.startswith("aten::"))
        if inner == 0 and name not in _NOT_COMPUTE:
            counts[name] += 1
            return 1
        return inner

    for event in events:
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:  # a top-level aten event
            visit(event)
    return counts


def audit_cycle(
    model: torch.nn.Module,
    whitening: Any,
    batch: tuple[torch.Tensor, torch.Tensor],
    period: int,
    warmup: int = 2,
) -> dict[str, float]:
    """Compute operators and host synchronisations of ``period`` training steps, amortised.

    The steps are the runner's order of hooks (``begin_step``, forward, backward,
    ``precondition``, ``optimizer.step``) with SGD, after ``warmup`` steps (first statistics and
    first refresh). ``period`` should be a multiple of the statistics and refresh periods, so the
    cycle holds every kind of step. Returns ``ops_per_step``, ``ops_refresh_step`` (the most
    expensive step), ``syncs`` over the whole cycle, and the whitened-layer count.
    """
    x, y = batch
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    step = 0

    def one() -> None:
        nonlocal step
        whitening.begin_step(step)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        whitening.precondition(step)
        opt.step()
        step += 1

    for _ in range(warmup):
        one()
    per_step = [sum(count_compute_ops(one).values()) for _ in range(period)]
    with SyncDetector() as syncs:
        for _ in range(period):
            one()
    layers = getattr(whitening, "layers", [])
    return {
        "ops_per_step": sum(per_step) / period,
        "ops_refresh_step": float(max(per_step)),
        "syncs": float(syncs.total),
        "layers": float(len(layers)),
    }
