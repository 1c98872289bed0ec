"""The per-layer framework of the whitening algorithms: selection, hooks, cadence, guards, state.

The three algorithms differ only in what they derive from a layer's input covariance and where they
apply it (the forward pass for ``feature``, the weight gradient for ``evd`` and ``recursive``).
Everything else (which layers, when statistics are gathered, when the preconditioner is refreshed,
sub-sampling randomness, timing, fallback counting and checkpoint state) lives here so that the
algorithms stay exactly comparable: the same configuration gathers the same rows at the same steps.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from brisk.runtime import is_distributed
from brisk.whitening.base import Whitening
from brisk.whitening.linalg import damped_eigh
from brisk.whitening.selection import Candidate, select, selection_table
from brisk.whitening.settings import WhiteningSettings
from brisk.whitening.state import LayerState
from brisk.whitening.stats import LayerAdapter, RunningCovariance, commit_all

log = logging.getLogger("brisk.whitening")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class WhitenedLayer:
    """One whitened weight and the state every algorithm keeps for it.

    ``module`` and ``adapter`` are the first module holding the weight; ``aliases`` are further
    modules sharing the same weight ``Parameter``: their inputs are pooled into the same statistics
    and the (summed) gradient is transformed once.
    """

    name: str
    module: nn.Module
    adapter: LayerAdapter
    stats: RunningCovariance
    state: LayerState = field(default_factory=LayerState)  # the algorithm's, typed (state.py)
    kappa_r: float | None = None
    kappa_white: float | None = None
    refreshes: int = 0
    aliases: list[tuple[str, nn.Module, LayerAdapter]] = field(default_factory=list)

    @property
    def modules(self) -> list[tuple[str, nn.Module, LayerAdapter]]:
        """The first module holding the weight, then its aliases: all whose inputs are pooled."""
        return [(self.name, self.module, self.adapter), *self.aliases]

    @property
    def biases(self) -> list[nn.Parameter]:
        """The distinct biases of the modules sharing the weight; empty unless every one has one."""
        found = [getattr(m, "bias", None) for _, m, _ in self.modules]
        if any(b is None for b in found):
            return []
        return list({id(b): b for b in found if b is not None}.values())

    @property
    def has_bias(self) -> bool:
        """Whether the bias algebra applies: every module sharing the weight has a bias."""
        return bool(self.biases)

    @property
    def cost(self) -> float:
        """Relative cost of one refresh (an ``M^3`` decomposition per group and block)."""
        return float(self.adapter.groups * self.adapter.dim**3)


class LayerWhitening(Whitening):
    """Base of ``feature``, ``evd`` and ``recursive``: a preconditioner for a plain PyTorch loop.

    Use::

        whitening = RecursiveWhitening(model)   # the tuned defaults of ``settings_type``
        loss.backward()
        whitening.step()                        # before optimizer.step()
        optimizer.step()

    Cadence, identical for every algorithm so that they stay comparable:

    * statistics are gathered in the forward pass of steps with ``step % stats_every == 0``
      (also before ``start_step``, so they are warm when whitening starts), from at most
      ``stats_max_rows`` random rows per layer;
    * the preconditioner is refreshed at steps ``>= start_step`` with ``step % inverse_every == 0``
      (and at the first such step that has statistics);
    * nothing is preconditioned before ``start_step``.

    :meth:`step` counts the steps itself and arms the statistics of the next one; the runner's
    :meth:`begin_step` / :meth:`precondition` pair does the same with its own step counter.  If an
    optimizer steps the whitened weights without either, the step is preconditioned from the
    optimizer's pre-step hook with a warning, so a forgotten call never silently turns whitening
    off.

    ``eps`` is relative: the damping added to R is ``eps * trace(R) / M`` (plus ``eps_abs``), so one
    value suits layers whose inputs differ in scale by orders of magnitude.
    """

    name = "layer"
    settings_type: ClassVar[type[WhiteningSettings]] = WhiteningSettings
    # the settings, copied onto the instance by __init__ (dtypes as torch dtypes)
    eps: float
    eps_abs: float
    momentum: float
    stats_every: int
    inverse_every: int
    stats_max_rows: int | None
    start_step: int
    layer_types: list[str]
    include: list[str]
    exclude: list[str]
    max_block: int
    max_dim: int | None
    decomposition_dtype: torch.dtype
    stats_dtype: torch.dtype
    center: bool
    normalize: bool
    seed: int
    condition_every: int
    # whether the algorithm transforms gradients (it may then pool shared weights and use blocks)
    gradient_transform: ClassVar[bool] = False

    def __init__(self, model: nn.Module | None = None, **settings: Any) -> None:
        self.settings = self.settings_type(**settings)
        for f in fields(self.settings):
            setattr(self, f.name, getattr(self.settings, f.name))
        self.decomposition_dtype = _DTYPES[self.settings.decomposition_dtype]
        self.stats_dtype = _DTYPES[self.settings.stats_dtype]

        self.layers: list[WhitenedLayer] = []
        self.skipped: dict[str, str] = {}
        self.candidates: list[Candidate] = []
        self._handles: list[Any] = []
        self._step = 0
        self._collect = True  # step 0 gathers statistics
        self._pending = False  # a training forward pass ran since the last preconditioning
        self._warned: set[str] = set()
        self._generator = torch.Generator()
        self._timers = {"stats": 0.0, "decomposition": 0.0, "transform": 0.0}
        self.fallbacks = 0
        self.rejected_stats = 0
        if model is not None:
            self.attach(model)

    # ----------------------------------------------------------------- selection and hooks
    def attach(self, model: nn.Module) -> None:
        """Select the layers of ``model`` to whiten and install the hooks that collect their inputs.

        The sampling generator is seeded per rank, so ranks draw different rows; its state is
        checkpointed, so a resumed run continues the same draws.
        """
        if self._handles:
            raise RuntimeError(f"whitening '{self.name}' is already attached; call detach() first")
        rank = torch.distributed.get_rank() if is_distributed() else 0
        self._generator.manual_seed(self.seed + rank)
        self.candidates = select(model, self.settings, gradient_transform=self.gradient_transform)
        self.layers, self.skipped = [], {}
        by_name: dict[str, WhitenedLayer] = {}
        for cand in self.candidates:
            if cand.skip_reason is not None:
                if cand.skip_reason != "type not in layer_types":
                    self.skipped[cand.name] = cand.skip_reason
                continue
            assert cand.adapter is not None
            if cand.shares_weight_with is not None:
                by_name[cand.shares_weight_with].aliases.append(
                    (cand.name, cand.module, cand.adapter)
                )
                continue
            adapter = cand.adapter
            stats = RunningCovariance(
                adapter.groups, adapter.dim, self.momentum, self.center, self.stats_dtype
            )
            layer = WhitenedLayer(cand.name, cand.module, adapter, stats)
            by_name[cand.name] = layer
            self.layers.append(layer)
            self._init_layer(layer)
        self._register_hooks()
        for layer in self.layers:
            for _, _, adapter in layer.modules:
                hooked = adapter.hook_module
                self._handles.append(hooked.register_forward_pre_hook(self._mark_pending))
        # a global hook: hold this object weakly, so a forgotten whitening does not outlive its
        # model
        me = weakref.ref(self)

        def before_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
            whitening = me()
            if whitening is not None:
                whitening._before_optimizer_step(optimizer, args, kwargs)

        self._handles.append(register_optimizer_step_pre_hook(before_optimizer_step))
        if rank == 0 and self.candidates:
            log.info(
                "whitening '%s': %d of %d candidate modules whitened\n%s",
                self.name,
                sum(c.skip_reason is None for c in self.candidates),
                len(self.candidates),
                selection_table(self.candidates),
            )

    def selection_table(self) -> str:
        """Every candidate module with its M, groups and blocks, and why it is not whitened."""
        return selection_table(self.candidates)

    def __str__(self) -> str:
        """``print(whitening)``: the start-up summary and selection table, which a plain script
        without logging configured never sees."""
        if not self.candidates and not self._handles:
            return f"whitening '{self.name}': not attached to a model"
        whitened = sum(c.skip_reason is None for c in self.candidates)
        return (
            f"whitening '{self.name}': {whitened} of {len(self.candidates)} candidate modules "
            f"whitened\n{self.selection_table()}"
        )

    def _register_hooks(self) -> None:
        for layer in self.layers:
            for _, _, adapter in layer.modules:
                hook = self._stats_hook(layer, adapter)
                handle = adapter.hook_module.register_forward_pre_hook(hook, with_kwargs=True)
                self._handles.append(handle)

    def _stats_hook(self, layer: WhitenedLayer, adapter: LayerAdapter):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if self._collect and module.training and torch.is_grad_enabled():
                with self._timed("stats"):
                    x = adapter.layer_input(args, kwargs)
                    if x is not None:
                        rows = adapter.rows(x, self.stats_max_rows, self._generator)
                        layer.stats.accumulate(rows)

        return hook

    def _mark_pending(self, module: nn.Module, args: tuple) -> None:
        if module.training and torch.is_grad_enabled():
            self._pending = True

    def detach(self) -> None:
        """Remove the hooks; statistics and preconditioners are kept (attach again to resume)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ----------------------------------------------------------------------------- cadence
    def begin_step(self, step: int) -> None:
        """Set the step counter (the runner's); optional in a plain loop, where :meth:`step`
        counts."""
        self._step = int(step)
        self._collect = step % self.stats_every == 0

    def step(self) -> None:
        """Precondition the gradients of this step and arm the statistics of the next one.

        Call it after ``loss.backward()`` (after ``scaler.unscale_`` with AMP, and after the last
        micro-batch when accumulating gradients) and before ``optimizer.step()``.
        """
        if self.layers and not self._pending:
            self._warn_once(
                "twice",
                "whitening.step() was called without a training forward pass since the last "
                "one; ignored (call it once per optimizer step, before optimizer.step())",
            )
            return
        self.precondition(self._step)

    def precondition(self, step: int) -> None:
        """Transform the gradients of step ``step``, then count it: the next is ``step + 1``."""
        collected = self._collect
        self._precondition(step)
        if collected:
            self._warn_unfed()
        self._pending = False
        self._step = int(step) + 1
        self._collect = self._step % self.stats_every == 0

    def _precondition(self, step: int) -> None:
        """The algorithm's work on the gradients of ``step`` (nothing for forward whitening)."""

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        """Global optimizer pre-step hook: catch a forgotten :meth:`step` for our weights."""
        if not self._pending or not self._steps_our_weights(optimizer):
            return
        self._warn_once(
            "forgotten",
            "optimizer.step() ran before whitening.step(): preconditioning now; call "
            "whitening.step() after loss.backward() and before optimizer.step()",
        )
        self.precondition(self._step)

    def unfed_layers(self) -> list[str]:
        """Whitened layers whose weights have gradients but whose inputs were never seen.

        Their forward hooks never ran: the weight is used without calling the module (``F.conv2d(x,
        conv.weight)``), or the forward pass runs a copy, a scripted or a compiled graph that
        bypasses module hooks. Such a layer would keep its identity preconditioner for ever.
        """
        return [
            layer.name
            for layer in self.layers
            if layer.stats.updates == 0
            and layer.stats.rejected == 0
            and not layer.stats.pending
            and layer.module.weight.grad is not None
        ]

    def _warn_unfed(self) -> None:
        """After a statistics step: a layer that trains but is never whitened is said, once."""
        if "unfed" in self._warned:
            return
        unfed = self.unfed_layers()
        if unfed:
            self._warn_once(
                "unfed",
                f"whitening '{self.name}': {len(unfed)} of {len(self.layers)} whitened layers "
                f"have gradients but no input statistics, so they are not whitened: "
                f"{', '.join(unfed)}. Their forward hooks did not run: call the module itself "
                "(not F.conv2d/F.linear on its weight), and attach the whitening to the module "
                "that runs the forward pass (not one copied, scripted or compiled around hooks)",
            )

    def _steps_our_weights(self, optimizer: torch.optim.Optimizer) -> bool:
        ours = {id(layer.module.weight) for layer in self.layers}
        return any(id(p) in ours for group in optimizer.param_groups for p in group["params"])

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

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
        assert layer.stats.trace is not None  # refreshes follow the first statistics
        return self.eps * layer.stats.trace.clamp_min(0.0) / layer.adapter.dim + self.eps_abs

    def decompose(self, layer: WhitenedLayer) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(evals, evecs, damping)`` of the damped covariance, or None (counted as a fallback: the
        caller keeps its previous preconditioner)."""
        damping = self.damping(layer)
        assert layer.stats.cov is not None
        decomposed = damped_eigh(layer.stats.cov, damping, self.decomposition_dtype)
        if decomposed is None:
            self.fallbacks += 1
            return None
        return (*decomposed, damping)

    # ----------------------------------------------------------------------------- logging
    def metrics(self) -> dict[str, float]:
        """Per-layer condition numbers, seconds per phase, and the fallback and rejection counts.

        The per-phase timers restart at zero each call, so a logged value covers one log interval;
        the counts are cumulative.
        """
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
        """Everything a resumed run needs to continue the same preconditioner: statistics, per-layer
        state, the sampling generator and the counters.
        """
        return {
            "algorithm": self.name,
            "step": self._step,
            "generator": self._generator.get_state(),
            "fallbacks": self.fallbacks,
            "rejected_stats": self.rejected_stats,
            "layers": {
                layer.name: {
                    "stats": layer.stats.state_dict(),
                    "state": layer.state.to_dict(),
                    "kappa_r": layer.kappa_r,
                    "kappa_white": layer.kappa_white,
                    "refreshes": layer.refreshes,
                }
                for layer in self.layers
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the attached model must have the same whitened layers."""
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
        self._collect = self._step % self.stats_every == 0
        self._pending = False
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
        """Restore the per-layer state from a checkpoint or another rank's refresh."""
        layer.state.load(state)
