"""The per-layer framework of the whitening algorithms: selection, hooks, cadence, guards, state.

The three algorithms differ only in what they derive from a layer's input covariance and where they
apply it (the forward pass for ``feature``, the weight gradient for ``evd`` and ``recursive``).
Everything else (which layers, when statistics are gathered, when the preconditioner is refreshed,
sub-sampling randomness, timing, fallback counting and checkpoint state) lives here so that the
algorithms stay exactly comparable: the same configuration gathers the same rows at the same steps.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from brisk.runtime import is_distributed
from brisk.whitening.base import Whitening
from brisk.whitening.linalg import damped_eigh
from brisk.whitening.stats import (
    LAYER_TYPES,
    LayerAdapter,
    RunningCovariance,
    commit_all,
    make_adapter,
)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class WhitenedLayer:
    """One selected layer and the state every algorithm keeps for it."""

    name: str
    module: nn.Module
    adapter: LayerAdapter
    stats: RunningCovariance
    state: dict[str, Any] = field(default_factory=dict)  # algorithm-specific tensors
    kappa_r: float | None = None
    kappa_white: float | None = None
    refreshes: int = 0

    @property
    def has_bias(self) -> bool:
        return getattr(self.module, "bias", None) is not None


class LayerWhitening(Whitening):
    """Base of ``feature``, ``evd`` and ``recursive``.

    Cadence, identical for every algorithm so that they stay comparable:

    * statistics are gathered in the forward pass of steps with ``step % stats_every == 0``
      (also before ``start_step``, so they are warm when whitening starts), from at most
      ``stats_max_rows`` random rows per layer;
    * the preconditioner is refreshed at steps ``>= start_step`` with ``step % inverse_every == 0``
      (and at the first such step that has statistics);
    * nothing is preconditioned before ``start_step``.

    ``eps`` is relative: the damping added to R is ``eps * trace(R) / M`` (plus ``eps_abs``), so one
    value suits layers whose inputs differ in scale by orders of magnitude.
    """

    name = "layer"

    def __init__(
        self,
        eps: float = 1e-3,
        eps_abs: float = 1e-12,
        momentum: float = 0.95,
        stats_every: int = 1,
        inverse_every: int = 1,
        stats_max_rows: int | None = None,
        start_step: int = 0,
        layer_types: Sequence[str] = ("Linear", "Conv1d", "Conv2d", "Conv3d"),
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        max_dim: int = 4096,
        decomposition_dtype: str = "float64",
        stats_dtype: str = "float32",
        center: bool = True,
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        for key, value in (("stats_every", stats_every), ("inverse_every", inverse_every)):
            if int(value) < 1:
                raise ValueError(f"whitening.{key} must be a positive integer, got {value}")
        if eps < 0 or eps_abs < 0:
            raise ValueError(f"whitening.eps and eps_abs must be >= 0, got {eps}, {eps_abs}")
        if stats_max_rows is not None and int(stats_max_rows) < 1:
            raise ValueError(f"whitening.stats_max_rows must be >= 1 or null, got {stats_max_rows}")
        unknown = [t for t in layer_types if t not in LAYER_TYPES]
        if unknown:
            raise ValueError(
                f"whitening.layer_types: unknown {unknown}; expected some of {list(LAYER_TYPES)}"
            )
        for key, value in (
            ("decomposition_dtype", decomposition_dtype),
            ("stats_dtype", stats_dtype),
        ):
            if value not in _DTYPES:
                raise ValueError(f"whitening.{key} must be one of {list(_DTYPES)}, got {value!r}")
        self.eps, self.eps_abs, self.momentum = float(eps), float(eps_abs), float(momentum)
        self.stats_every, self.inverse_every = int(stats_every), int(inverse_every)
        self.stats_max_rows = None if stats_max_rows is None else int(stats_max_rows)
        self.start_step = int(start_step)
        self.layer_types = tuple(layer_types)
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.max_dim = int(max_dim)
        self.decomposition_dtype = _DTYPES[decomposition_dtype]
        self.stats_dtype = _DTYPES[stats_dtype]
        self.center, self.normalize = bool(center), bool(normalize)
        self.seed = int(seed)

        self.layers: list[WhitenedLayer] = []
        self.skipped: dict[str, str] = {}
        self._handles: list[Any] = []
        self._step = 0
        self._collect = False
        self._generator = torch.Generator()
        self._timers = {"stats": 0.0, "decomposition": 0.0, "transform": 0.0}
        self.fallbacks = 0
        self.rejected_stats = 0

    # ----------------------------------------------------------------- selection and hooks
    def _skip_reason(self, name: str, module: nn.Module) -> str | None:
        """Why a layer is *not* whitened, or None when it is."""
        types = tuple(LAYER_TYPES[t] for t in self.layer_types)
        if not isinstance(module, types) or type(module) not in LAYER_TYPES.values():
            return "type"
        if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return "not included"
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return "excluded"
        if getattr(module, "weight", None) is None:
            return "no weight"
        return None

    def attach(self, model: nn.Module) -> None:
        if self._handles:
            raise RuntimeError(f"whitening '{self.name}' is already attached; call detach() first")
        rank = torch.distributed.get_rank() if is_distributed() else 0
        self._generator.manual_seed(self.seed + rank)
        self.layers, self.skipped = [], {}
        for name, module in model.named_modules():
            why = self._skip_reason(name, module)
            if why == "type":
                continue
            if why is not None:
                self.skipped[name] = why
                continue
            adapter = make_adapter(module)
            if adapter.dim > self.max_dim:
                self.skipped[name] = f"M={adapter.dim} > max_dim={self.max_dim}"
                continue
            stats = RunningCovariance(
                adapter.groups, adapter.dim, self.momentum, self.center, self.stats_dtype
            )
            layer = WhitenedLayer(name, module, adapter, stats)
            self.layers.append(layer)
            self._init_layer(layer)
        self._register_hooks()

    def _register_hooks(self) -> None:
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_pre_hook(self._stats_hook(layer)))

    def _stats_hook(self, layer: WhitenedLayer):
        def hook(module: nn.Module, args: tuple) -> None:
            if self._collect and module.training and torch.is_grad_enabled():
                with self._timed("stats"):
                    layer.stats.accumulate(
                        layer.adapter.rows(args[0], self.stats_max_rows, self._generator)
                    )

        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ----------------------------------------------------------------------------- cadence
    def begin_step(self, step: int) -> None:
        self._step = int(step)
        self._collect = step % self.stats_every == 0

    def _refresh_due(self, layer: WhitenedLayer, step: int) -> bool:
        if step < self.start_step or layer.stats.cov is None:
            return False
        return step % self.inverse_every == 0 or layer.refreshes == 0

    def _commit(self, layers: list[WhitenedLayer]) -> None:
        with self._timed("stats"):
            self.rejected_stats += commit_all([layer.stats for layer in layers])

    # ------------------------------------------------------------------------------ helpers
    @contextmanager
    def _timed(self, key: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._timers[key] += time.perf_counter() - t0

    def damping(self, layer: WhitenedLayer) -> Tensor:
        """Per-group damping ``eps * trace(R) / M + eps_abs`` (shape ``(G,)``)."""
        return self.eps * layer.stats.trace.clamp_min(0.0) / layer.adapter.dim + self.eps_abs

    def decompose(self, layer: WhitenedLayer) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(evals, evecs, damping)`` of the damped covariance, or None (counted as a fallback: the
        caller keeps its previous preconditioner)."""
        damping = self.damping(layer)
        decomposed = damped_eigh(layer.stats.cov, damping, self.decomposition_dtype)
        if decomposed is None:
            self.fallbacks += 1
            return None
        return (*decomposed, damping)

    # ----------------------------------------------------------------------------- logging
    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for layer in self.layers:
            if layer.kappa_r is not None:
                out[f"whiten/kappa_R/{layer.name}"] = layer.kappa_r
            if layer.kappa_white is not None:
                out[f"whiten/kappa_white/{layer.name}"] = layer.kappa_white
        for key, seconds in self._timers.items():
            out[f"whiten/seconds_{key}"] = seconds
            self._timers[key] = 0.0
        out["whiten/fallbacks"] = float(self.fallbacks)
        out["whiten/rejected_stats"] = float(self.rejected_stats)
        out["whiten/layers"] = float(len(self.layers))
        out["whiten/skipped_layers"] = float(len(self.skipped))
        return out

    # ------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.name,
            "step": self._step,
            "generator": self._generator.get_state(),
            "fallbacks": self.fallbacks,
            "rejected_stats": self.rejected_stats,
            "layers": {
                layer.name: {
                    "stats": layer.stats.state_dict(),
                    "state": dict(layer.state),
                    "kappa_r": layer.kappa_r,
                    "kappa_white": layer.kappa_white,
                    "refreshes": layer.refreshes,
                }
                for layer in self.layers
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.name:
            raise ValueError(
                f"whitening state is for '{state.get('algorithm')}', this run uses '{self.name}'"
            )
        names = {layer.name for layer in self.layers}
        if set(state["layers"]) != names:
            raise ValueError(
                "whitening state layers do not match the attached model: "
                f"missing {sorted(names - set(state['layers']))}, "
                f"unexpected {sorted(set(state['layers']) - names)}"
            )
        self._step = int(state["step"])
        self._generator.set_state(state["generator"])
        self.fallbacks = int(state["fallbacks"])
        self.rejected_stats = int(state["rejected_stats"])
        for layer in self.layers:
            saved = state["layers"][layer.name]
            layer.stats.load_state_dict(saved["stats"])
            layer.kappa_r, layer.kappa_white = saved["kappa_r"], saved["kappa_white"]
            layer.refreshes = int(saved["refreshes"])
            self._load_layer_state(layer, saved["state"])

    # ------------------------------------------------------------------- algorithm specific
    def _init_layer(self, layer: WhitenedLayer) -> None:
        """Create the algorithm's per-layer state (identity preconditioner)."""

    def _load_layer_state(self, layer: WhitenedLayer, state: dict[str, Any]) -> None:
        layer.state = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in state.items()}
