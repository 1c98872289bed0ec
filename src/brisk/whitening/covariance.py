"""Running input covariances, stacked by size: one buffer per covariance shape, folded at once.

Every whitened layer contributes ``G * blocks`` covariances of size ``M x M`` ("slabs").  All the
slabs of one ``M`` live in one :class:`CovarianceGroup`: ``cov (N, M, M)``, ``mean (N, M)`` and
``trace (N,)`` for the ``N`` slabs of every member layer, plus the pending sums of the current
statistics step.  A layer's forward hook adds its rows to its slice of the sums (a few operators
per layer); the fold that centres the sums and moves the running average is one batched pass per
group, so its cost does not grow with the number of layers.

No decision in here reads a value on the host.  A batch whose covariance or mean is not finite is
rejected by a device mask (``torch.where``) that keeps the previous average; the update counts
are device tensors, read only when they are logged (the rejections are the folds a layer took
part in, which the host counts, minus its updates).  Rows are summed about a
reference point (the running mean, or the first batch's own mean before any update): ``sum x x^T
/ n - mu mu^T`` cancels catastrophically in float32 when the mean is large, as it is after a ReLU,
and the lost digits are exactly the small eigenvalues that whitening amplifies most.

Every buffer is updated in place (``copy_``, ``baddbmm_``, ``add_``), so a training step can be
captured in a CUDA graph once the buffers exist.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from brisk.runtime import is_distributed

__all__ = ["CovarianceGroup", "LayerStatistics", "stats_dtype"]


def stats_dtype(x: Tensor) -> torch.dtype:
    """Statistics never accumulate in half precision (AMP); float64 inputs stay float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class CovarianceGroup:
    """The running covariances of every member layer whose blocks are ``dim x dim``.

    ``slabs[i]`` is member ``i``'s number of covariances (its weight groups times blocks). The
    buffers are created by the first rows (on their device, in ``dtype`` or float64 for float64
    rows) or by :meth:`load_state_dict`.
    """

    def __init__(
        self,
        dim: int,
        slabs: list[int],
        momentum: float,
        center: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dim, self.slabs, self.momentum, self.center = dim, list(slabs), momentum, center
        self.dtype = dtype
        self.offsets = [sum(self.slabs[:i]) for i in range(len(self.slabs) + 1)]
        self.size = self.offsets[-1]
        # member of each slab: a per-layer reduction is needed only when a member has several
        self._slab_member = [i for i, n in enumerate(self.slabs) for _ in range(n)]
        self._one_slab_each = all(n == 1 for n in self.slabs)
        self.pending = [False] * len(self.slabs)  # rows added since the last fold (host)
        self.fed = [False] * len(self.slabs)  # rows ever added (host): the forward hook ran
        self._fed_folds = [0] * len(self.slabs)  # folds with rows (host): updates + rejections
        self.buffers: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------ buffers
    @property
    def ready(self) -> bool:
        """Whether the buffers exist (after the first rows or a restored checkpoint)."""
        return bool(self.buffers)

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        n, m = self.size, self.dim

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, device=device, dtype=dtype)

        self.buffers = {
            "cov": zeros(n, m, m),
            "mean": zeros(n, m),
            "trace": zeros(n),
            # pending sums of the current statistics step, about the reference point ``shift``
            "sxx": zeros(n, m, m),
            "sx": zeros(n, m),
            "rows": zeros(n),
            "shift": zeros(n, m),
            # per member, counted on the device
            "updates": torch.zeros(len(self.slabs), dtype=torch.int64, device=device),
            # per slab, the weight of its next accepted batch: 1 until its first, then 1 - momentum
            "rate": torch.ones(n, device=device, dtype=dtype),
            "slab_member": torch.tensor(self._slab_member, dtype=torch.int64, device=device),
        }

    def _ensure(self, device: torch.device, dtype: torch.dtype) -> None:
        if not self.buffers:
            self._allocate(device, dtype)
        elif self.buffers["cov"].device != device:  # the model moved after the first statistics
            self.buffers = {k: v.to(device) for k, v in self.buffers.items()}

    def __getattr__(self, name: str) -> Tensor:
        buffers = self.__dict__.get("buffers", {})
        if name in buffers:
            return buffers[name]
        raise AttributeError(name)

    def member(self, index: int) -> LayerStatistics:
        """Member ``index``'s view of the group: its slices of every buffer."""
        return LayerStatistics(self, index)

    # ------------------------------------------------------------------------ accumulation
    def accumulate(self, index: int, rows: Tensor) -> None:
        """Add rows ``(N, G, M)`` of member ``index`` to its pending sums (no host read)."""
        rows = rows.detach()
        dtype = self.buffers["cov"].dtype if self.buffers else self.dtype
        if not self.buffers:
            dtype = torch.promote_types(stats_dtype(rows), self.dtype)
        self._ensure(rows.device, dtype)
        rows = rows.to(dtype)
        lo, hi = self.offsets[index], self.offsets[index + 1]
        b = self.buffers
        shift = b["shift"][lo:hi]
        if not self.pending[index]:
            self.pending[index] = True
            if not self.fed[index]:
                # reference point before any fold: this batch's own mean (zero with several
                # ranks, which must agree on it without communicating); afterwards the running
                # mean, which the fold copies into ``shift``
                shift.copy_(torch.zeros_like(rows[0]) if is_distributed() else rows.mean(0))
            self.fed[index] = True
        # forward hooks run inside autocast, which would turn this product into a bf16/fp16 one
        with torch.autocast(rows.device.type, enabled=False):
            if hi - lo == 1:  # one covariance: a plain matrix product, no batched copies
                centred = rows[:, 0] - shift[0]
                b["sxx"][lo].addmm_(centred.T, centred)
                b["sx"][lo].add_(centred.sum(0))
            else:
                by_group = (rows - shift).transpose(0, 1)  # (G, N, M)
                b["sxx"][lo:hi].baddbmm_(by_group.transpose(1, 2), by_group)
                b["sx"][lo:hi].add_(by_group.sum(1))
        b["rows"][lo:hi].add_(rows.shape[0])

    @property
    def has_pending(self) -> bool:
        """Whether any member added rows since the last fold."""
        return any(self.pending)

    def pending_tensors(self) -> list[Tensor]:
        """The sums a data-parallel run all-reduces before :meth:`fold`."""
        return [self.buffers["sxx"], self.buffers["sx"], self.buffers["rows"]]

    def fold(self) -> None:
        """Centre the pending sums and fold them into the running average, in one batched pass.

        A member whose new covariance or mean is not finite in any of its slabs keeps its previous
        statistics and counts a rejection; members without rows this step are left alone.
        """
        if not self.has_pending:
            return
        b = self.buffers
        cov, mean, trace = b["cov"], b["mean"], b["trace"]
        sxx, sx, n_rows, shift = b["sxx"], b["sx"], b["rows"], b["shift"]
        fed = n_rows > 0
        n = n_rows.clamp_min(1.0)
        shifted = sx / n[:, None]  # mean of the shifted rows
        if self.center:
            new_mean = shifted + shift
            new_cov = torch.baddbmm(
                sxx / n[:, None, None], shifted.unsqueeze(2), shifted.unsqueeze(1), alpha=-1
            )
        else:  # second moment about 0: undo the shift, x = x' + s
            outer = torch.baddbmm(
                sxx / n[:, None, None], shifted.unsqueeze(2), shift.unsqueeze(1), alpha=2.0
            )  # sxx/n + 2 m' s^T: symmetrised below, where it becomes m' s^T + s m'^T
            new_cov = torch.baddbmm(outer, shift.unsqueeze(2), shift.unsqueeze(1))
            new_mean = torch.zeros_like(shifted)
        new_cov = 0.5 * (new_cov + new_cov.transpose(1, 2))
        new_trace = new_cov.diagonal(dim1=-2, dim2=-1).sum(-1)
        # Cauchy-Schwarz bounds every entry of a covariance by its diagonal, so a finite trace
        # (plus a finite mean) is a finite update; a non-finite one is rejected
        total = new_trace + new_mean.sum(1)
        finite = (total - total) == 0  # inf - inf and nan are nan
        if self._one_slab_each:
            ok = member_ok = finite & fed
        else:
            updates, member = b["updates"], b["slab_member"]
            bad = torch.zeros_like(updates).index_add(0, member, (fed & ~finite).long())
            member_ok = (updates.index_add(0, member, fed.long()) > updates) & (bad == 0)
            ok = member_ok[member]
        # the first accepted batch is the average (rate 1); later ones move it by 1 - momentum
        weight = torch.where(ok, b["rate"], 0.0)
        cov.lerp_(torch.where(ok[:, None, None], new_cov, cov), weight[:, None, None])
        mean.lerp_(torch.where(ok[:, None], new_mean, mean), weight[:, None])
        trace.lerp_(torch.where(ok, new_trace, trace), weight)
        b["rate"].masked_fill_(ok, 1.0 - self.momentum)
        b["updates"].add_(member_ok)
        # the next step's reference point is the running mean; the sums start again at zero
        torch._foreach_copy_([shift], [mean])
        torch._foreach_zero_([sxx, sx, n_rows])
        for i, pending in enumerate(self.pending):
            self._fed_folds[i] += pending
        self.pending = [False] * len(self.slabs)

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self, index: int) -> dict[str, Any]:
        """Member ``index``'s running statistics: the covariance as its upper triangle (it is
        exactly symmetric), the mean, the trace and the counts; pending sums are never saved (a
        checkpoint is taken between steps, after the fold)."""
        if not self.buffers:
            return {"cov": None, "mean": None, "trace": None, "updates": 0, "folds": 0}
        lo, hi = self.offsets[index], self.offsets[index + 1]
        rows, cols = torch.triu_indices(self.dim, self.dim, device=self.buffers["cov"].device)
        return {
            "cov": self.buffers["cov"][lo:hi, rows, cols].clone(),
            "mean": self.buffers["mean"][lo:hi].clone(),
            "trace": self.buffers["trace"][lo:hi].clone(),
            "updates": self.buffers["updates"][index].clone(),
            "folds": self._fed_folds[index],
        }

    def load_state_dict(self, index: int, state: dict[str, Any]) -> None:
        """Restore member ``index`` from :meth:`state_dict` (in place once the buffers exist)."""
        if state["cov"] is None:
            return
        packed = state["cov"]
        self._ensure(packed.device, packed.dtype)
        b = self.buffers
        lo, hi = self.offsets[index], self.offsets[index + 1]
        rows, cols = torch.triu_indices(self.dim, self.dim, device=b["cov"].device)
        full = torch.zeros(
            hi - lo, self.dim, self.dim, dtype=b["cov"].dtype, device=b["cov"].device
        )
        full[:, rows, cols] = packed.to(full)
        full[:, cols, rows] = packed.to(full)
        b["cov"][lo:hi].copy_(full)
        b["mean"][lo:hi].copy_(state["mean"])
        b["shift"][lo:hi].copy_(state["mean"])  # the reference point every fold leaves behind
        b["trace"][lo:hi].copy_(state["trace"])
        b["updates"][index].copy_(torch.as_tensor(state["updates"]))
        b["rate"][lo:hi].fill_(1.0 - self.momentum if int(state["updates"]) > 0 else 1.0)
        self._fed_folds[index] = int(state["folds"])
        b["sxx"].zero_()
        b["sx"].zero_()
        b["rows"].zero_()
        self.pending[index] = False
        self.fed[index] = self.fed[index] or bool(state.get("fed", True))


class LayerStatistics:
    """One member layer's view of its :class:`CovarianceGroup`: its slices of the buffers.

    ``cov`` ``(G, M, M)``, ``mean`` ``(G, M)`` and ``trace`` ``(G,)`` are views (None before the
    first statistics); ``updates`` and ``rejected`` are 0-d device tensors.
    """

    def __init__(self, group: CovarianceGroup, index: int) -> None:
        self.group, self.index = group, index
        self.lo, self.hi = group.offsets[index], group.offsets[index + 1]

    def _view(self, name: str) -> Tensor | None:
        buffers = self.group.buffers
        return buffers[name][self.lo : self.hi] if buffers else None

    @property
    def cov(self) -> Tensor | None:
        """The running covariance ``(G, M, M)``."""
        return self._view("cov")

    @property
    def mean(self) -> Tensor | None:
        """The running mean of the rows ``(G, M)``."""
        return self._view("mean")

    @property
    def trace(self) -> Tensor | None:
        """The trace of the running covariance ``(G,)``."""
        return self._view("trace")

    @property
    def updates(self) -> Tensor:
        """Accepted statistics updates, a snapshot (a device tensor: reading its value waits)."""
        if not self.group.buffers:
            return torch.zeros((), dtype=torch.int64)
        return self.group.buffers["updates"][self.index].clone()

    @property
    def rejected(self) -> Tensor:
        """Rejected (non-finite) statistics updates: folds with rows minus accepted updates."""
        return self.group._fed_folds[self.index] - self.updates

    @property
    def pending(self) -> bool:
        """Whether rows were added since the last fold (host)."""
        return self.group.pending[self.index]

    @property
    def fed(self) -> bool:
        """Whether the layer's forward hook ever added rows (host)."""
        return self.group.fed[self.index]

    def accumulate(self, rows: Tensor) -> None:
        """Add rows ``(N, G, M)`` to this layer's pending sums."""
        self.group.accumulate(self.index, rows)
