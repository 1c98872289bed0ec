"""Layer adapters: what a whitened layer multiplies, as patch rows ``(N, G, M)``.

Every algorithm needs the covariance of the inputs *as the layer multiplies them*: the rows of
``X`` in ``y = W x``.  For a convolution those rows are im2col patches, so stride, padding
(including ``padding='same'`` and non-zero ``padding_mode``), dilation and groups must be reproduced
exactly or the preconditioner silently whitens the wrong quantity.  One small adapter per layer type
turns a layer input into rows ``(N, G, M)``: ``N`` samples, ``G`` weight groups (one covariance per
group, because a grouped convolution's output channels only see their group's inputs), ``M``
features.

Statistics collection, not the decomposition, dominates the cost of input whitening (an unfold of
a whole ResNet batch is several SGD steps), so adapters sub-sample rows *before* copying patches:
random (image, position) pairs are gathered from a strided view of the padded input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionOutputAdapter",
    "BlockAdapter",
    "ConvAdapter",
    "LayerAdapter",
    "LinearAdapter",
    "make_adapter",
]


class LayerAdapter:
    """Maps a layer's input to patch rows and its weight to per-group matrices ``(G, S_g, M)``."""

    groups: int = 1
    dim: int

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._sizes: dict[tuple, Tensor] = {}  # sampling moduli per input shape and device

    @property
    def hook_module(self) -> nn.Module:
        """The module whose forward pre-hook sees the layer's input (the layer itself, usually)."""
        return self.module

    def layer_input(self, args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
        """The layer's input, from the arguments of :attr:`hook_module`'s forward call."""
        return args[0]

    def num_rows(self, x: Tensor) -> int:
        """Patch rows ``x`` yields, before sampling: the denominator of the statistics."""
        raise NotImplementedError

    def rows(
        self, x: Tensor, max_rows: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Patch rows ``(N, G, M)``; with ``max_rows``, a uniform sample with replacement."""
        raise NotImplementedError

    def output_from_rows(self, y: Tensor, x: Tensor) -> Tensor:
        """Reshape per-row outputs ``(N, S)`` to the layer's output layout for input ``x``."""
        raise NotImplementedError

    def weight_matrix(self, weight: Tensor) -> Tensor:
        """The weight (or its gradient) as ``(G, S_g, M)``; a view when possible."""
        out = weight.shape[0]
        return weight.reshape(self.groups, out // self.groups, self.dim)

    def weight_from_matrix(self, matrix: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of :meth:`weight_matrix`: ``(G, S_g, M)`` back to the weight's ``shape``."""
        return matrix.reshape(shape)

    @property
    def blocks(self) -> int:
        """Covariance blocks per weight group (1: the whole group is one block)."""
        return 1

    def _sample(
        self,
        sizes: tuple[int, ...],
        max_rows: int | None,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor | None:
        """``(len(sizes), max_rows)`` uniform draws of each coordinate of a row (with
        replacement), drawn on ``device`` so that no index crosses from the host, in two operators
        whatever the number of coordinates: one draw of wide integers, reduced modulo each size
        (the bias is below ``size / 2**62``); None when every row is kept."""
        if max_rows is None or math.prod(sizes) <= max_rows:
            return None
        if len(sizes) == 1:
            return torch.randint(sizes[0], (1, max_rows), generator=generator, device=device)
        key = (sizes, device)
        if key not in self._sizes:  # once per input shape: the moduli, resident on the device
            self._sizes[key] = torch.tensor(sizes, device=device)[:, None]
        wide = torch.randint(2**62, (len(sizes), max_rows), generator=generator, device=device)
        return wide.remainder_(self._sizes[key])


class LinearAdapter(LayerAdapter):
    """``nn.Linear``: every leading index of the input is one sample."""

    module: nn.Linear

    def __init__(self, module: nn.Linear) -> None:
        super().__init__(module)
        self.dim = module.in_features

    def num_rows(self, x: Tensor) -> int:
        """One row per leading index of ``x``."""
        return x.numel() // self.dim

    def rows(self, x, max_rows=None, generator=None):
        """``(N, 1, M)``: the flattened leading indices; ``max_rows`` samples them uniformly."""
        flat = x.reshape(-1, self.dim)
        idx = self._sample((flat.shape[0],), max_rows, generator, flat.device)
        if idx is not None:
            flat = flat[idx[0]]
        return flat.unsqueeze(1)

    def output_from_rows(self, y, x):
        """Restore ``x``'s leading dimensions, with the output features last."""
        return y.reshape(*x.shape[:-1], y.shape[-1])


class ConvAdapter(LayerAdapter):
    """``nn.Conv1d/2d/3d`` with any stride, padding, padding_mode, dilation and groups.

    Patches come from ``Tensor.unfold`` on each spatial dimension of the padded input with a window
    of the dilated kernel extent, then every ``dilation``-th tap; the row order (channel, then
    kernel taps) is the order of ``weight.view(C_out, -1)``, so group ``j`` owns the contiguous
    block ``[j*M, (j+1)*M)``.
    """

    module: nn.modules.conv._ConvNd

    def __init__(self, module: nn.modules.conv._ConvNd) -> None:
        super().__init__(module)
        if getattr(module, "transposed", False):
            raise TypeError(f"transposed convolutions are not supported: {type(module).__name__}")
        self.nd = len(module.kernel_size)
        self.groups = module.groups
        self.dim = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        self.pad = self._explicit_padding(module)
        self.pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode

    @staticmethod
    def _explicit_padding(module) -> list[int]:
        """``F.pad`` amounts (last dimension first) reproducing the convolution's own padding."""
        pairs = []
        for i in range(len(module.kernel_size)):
            if module.padding == "same":
                total = module.dilation[i] * (module.kernel_size[i] - 1)
                pairs.append((total // 2, total - total // 2))
            elif module.padding == "valid":
                pairs.append((0, 0))
            else:
                pairs.append((module.padding[i], module.padding[i]))
        return [p for pair in reversed(pairs) for p in pair]

    def _windows(self, x: Tensor) -> Tensor:
        """A strided view ``(B, C, L_1..L_n, k_1..k_n)`` of every patch; nothing copied yet."""
        if x.dim() == self.nd + 1:  # unbatched input
            x = x.unsqueeze(0)
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.pad_mode)
        m = self.module
        for i in range(self.nd):
            extent = m.dilation[i] * (m.kernel_size[i] - 1) + 1
            x = x.unfold(2 + i, extent, m.stride[i])
        if any(d > 1 for d in m.dilation):
            taps: tuple[Any, ...] = (Ellipsis, *(slice(None, None, d) for d in m.dilation))
            x = x[taps]
        return x

    def num_rows(self, x: Tensor) -> int:
        """One row per output position of each sample (batch times the output's spatial size)."""
        w = self._windows(x)
        return w.shape[0] * math.prod(w.shape[2 : 2 + self.nd])

    def rows(self, x, max_rows=None, generator=None):
        """Patch rows ``(N, G, M)`` in ``weight.view(C_out, -1)`` order.

        Sampled rows are gathered from the strided view by index, so only ``max_rows`` patches are
        ever copied.
        """
        w = self._windows(x)
        batch, spatial = w.shape[0], w.shape[2 : 2 + self.nd]
        total = batch * math.prod(spatial)
        coords = self._sample((batch, *spatial), max_rows, generator, x.device)
        if coords is None:
            # (B, C, L.., k..) -> (B, L.., C, k..) -> rows
            perm = (0, *range(2, 2 + self.nd), 1, *range(2 + self.nd, 2 + 2 * self.nd))
            flat = w.permute(perm).reshape(total, self.groups, self.dim)
            return flat
        # one uniform draw per coordinate is one uniform draw of a (image, position) pair;
        # advanced indices split by the channel slice: result is (n, C, k..)
        picked = w[(coords[0], slice(None), *coords[1:])]
        return picked.reshape(coords[0].shape[0], self.groups, self.dim)

    def output_from_rows(self, y, x):
        """Rows back to ``(B, C_out, L_1..L_n)`` (no batch dimension for unbatched ``x``)."""
        w = self._windows(x)
        batch, spatial = w.shape[0], w.shape[2 : 2 + self.nd]
        out = y.reshape(batch, *spatial, y.shape[-1])
        out = out.permute(0, self.nd + 1, *range(1, self.nd + 1))
        return out if x.dim() == self.nd + 2 else out.squeeze(0)


class AttentionOutputAdapter(LinearAdapter):
    """``nn.MultiheadAttention.out_proj``: a Linear that its parent uses without calling it.

    The attention kernel multiplies by ``out_proj.weight`` directly, so hooks on ``out_proj`` never
    run.  Its input, the concatenated heads, is recomputed on statistics steps from the parent's
    own call with ``out_proj`` replaced by the identity (one extra attention pass, no gradient).
    """

    def __init__(self, module: nn.Linear, parent: nn.MultiheadAttention) -> None:
        super().__init__(module)
        self.parent = parent
        self._busy = False

    @property
    def hook_module(self) -> nn.Module:
        """The parent attention module: ``out_proj``'s own hooks never run."""
        return self.parent

    def layer_input(self, args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
        """The concatenated heads, recomputed through the parent with ``out_proj`` as the identity.

        None while that recomputation runs, so the nested call of the parent's hook collects
        nothing.
        """
        if self._busy:  # the recomputation below calls the parent again
            return None
        weight = self.module.weight
        identity = {
            "out_proj.weight": torch.eye(self.dim, dtype=weight.dtype, device=weight.device),
            "out_proj.bias": torch.zeros(self.dim, dtype=weight.dtype, device=weight.device),
        }
        self._busy = True
        try:
            with torch.no_grad():
                out = torch.func.functional_call(self.parent, identity, args, kwargs)
        finally:
            self._busy = False
        return out[0]


class BlockAdapter(LayerAdapter):
    """A layer whose ``M`` exceeds ``max_block``: its covariance is block-diagonal.

    The ``M`` inputs of each weight group are cut into ``blocks`` consecutive runs of equal length,
    and each run is one covariance "group" ``(G * blocks, M / blocks)``.  For a convolution the runs
    are whole input channels (all their kernel taps) whenever the sizes allow, so a block keeps the
    spatial correlations that whitening is mostly about and drops only those between far channels.
    The weight gradient is transformed block by block: ``G <- [G_1 Q_1, ..., G_b Q_b]``.
    """

    def __init__(self, inner: LayerAdapter, blocks: int) -> None:
        super().__init__(inner.module)
        if inner.dim % blocks:
            raise ValueError(f"{blocks} blocks do not divide M={inner.dim}")
        self.inner, self._blocks = inner, blocks
        self.weight_groups = inner.groups
        self.groups = inner.groups * blocks
        self.dim = inner.dim // blocks

    @property
    def blocks(self) -> int:
        """Blocks per weight group: ``M / blocks`` inputs each."""
        return self._blocks

    @property
    def hook_module(self) -> nn.Module:
        """The wrapped layer's: blocking changes the statistics, not where they come from."""
        return self.inner.hook_module

    def layer_input(self, args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
        """The wrapped layer's input, unchanged."""
        return self.inner.layer_input(args, kwargs)

    def num_rows(self, x: Tensor) -> int:
        """The wrapped layer's row count: blocking splits columns, not rows."""
        return self.inner.num_rows(x)

    def rows(self, x, max_rows=None, generator=None):
        """The wrapped layer's rows with each group's ``M`` inputs cut into ``blocks`` groups."""
        rows = self.inner.rows(x, max_rows, generator)
        return rows.reshape(rows.shape[0], self.groups, self.dim)

    def output_from_rows(self, y, x):
        """As the wrapped layer: outputs are not blocked."""
        return self.inner.output_from_rows(y, x)

    def weight_matrix(self, weight: Tensor) -> Tensor:
        """``(G * blocks, S_g, M / blocks)``: each block's columns of every group's weight."""
        full = self.inner.weight_matrix(weight)  # (G, S_g, M)
        g, s = full.shape[:2]
        blocked = full.reshape(g, s, self._blocks, self.dim).transpose(1, 2)
        return blocked.reshape(self.groups, s, self.dim)

    def weight_from_matrix(self, matrix: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of :meth:`weight_matrix`: the blocks' columns put back side by side."""
        s = matrix.shape[1]
        full = matrix.reshape(self.weight_groups, self._blocks, s, self.dim).transpose(1, 2)
        return full.reshape(shape)


def block_count(dim: int, max_block: int, unit: int = 1) -> int:
    """Fewest equal blocks of at most ``max_block`` inputs, whole ``unit``s each when possible.

    ``unit`` is a convolution's kernel size (its taps per input channel): blocks of whole channels
    keep each channel's patch intact.  Falls back to any divisor of ``dim``, so no layer is dropped.
    """
    if dim <= max_block:
        return 1
    need = math.ceil(dim / max_block)
    for aligned in (True, False):
        for blocks in range(need, dim + 1):
            if dim % blocks == 0 and (not aligned or (dim // blocks) % unit == 0):
                return blocks
    return dim


LAYER_TYPES: dict[str, type[nn.Module]] = {
    "Linear": nn.Linear,
    "Conv1d": nn.Conv1d,
    "Conv2d": nn.Conv2d,
    "Conv3d": nn.Conv3d,
}


def make_adapter(
    module: nn.Module, max_block: int | None = None, parent: nn.Module | None = None
) -> LayerAdapter:
    """The adapter for a supported layer (subclasses too); a clear error for anything else.

    With ``max_block``, a layer with more inputs gets a :class:`BlockAdapter`.  ``parent`` is the
    ``nn.MultiheadAttention`` that owns ``module`` as its ``out_proj``.
    """
    adapter: LayerAdapter | None
    if isinstance(parent, nn.MultiheadAttention) and isinstance(module, nn.Linear):
        adapter, unit = AttentionOutputAdapter(module, parent), 1
    elif isinstance(module, nn.Linear):
        adapter, unit = LinearAdapter(module), 1
    elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        adapter, unit = ConvAdapter(module), math.prod(module.kernel_size)
    else:
        adapter = None
    if adapter is not None:
        if max_block is None or adapter.dim <= max_block:
            return adapter
        return BlockAdapter(adapter, block_count(adapter.dim, max_block, unit))
    raise TypeError(
        f"no whitening adapter for {type(module).__name__}; supported: {', '.join(LAYER_TYPES)}"
    )
