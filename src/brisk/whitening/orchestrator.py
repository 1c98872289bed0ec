"""The orchestrator of the whitening algorithms: selection, groups, hooks, cadence, guards, state.

The three algorithms differ only in what they derive from a layer's input covariance and where they
apply it (the forward pass for ``feature``, the weight gradient for ``evd`` and ``recursive``).
Everything else (which layers, when statistics are gathered, when the preconditioner is refreshed,
sub-sampling randomness, timing, fallback counting and checkpoint state) lives here so that the
algorithms stay exactly comparable: the same configuration gathers the same rows at the same steps.

Layers are grouped by the size ``M`` of their covariance blocks (:class:`CovarianceGroup`): the
statistics of a group live in one stacked buffer and are folded, refreshed and applied by batched
operators, one call per group or per shape bucket rather than one per layer.  The cadence is
decided on the host from the step counter alone; everything that depends on a value (a rejected
batch, a failed factorisation) is decided on the device, so no step waits for it (see
``brisk.whitening.audit`` for how that is checked).
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from brisk.runtime import is_distributed
from brisk.whitening.adapters import LayerAdapter
from brisk.whitening.base import Whitening
from brisk.whitening.covariance import CovarianceGroup, LayerStatistics
from brisk.whitening.linalg import damped_eigh
from brisk.whitening.selection import Candidate, select, selection_table
from brisk.whitening.settings import WhiteningSettings
from brisk.whitening.state import LayerState

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
    stats: LayerStatistics
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
    def group(self) -> CovarianceGroup:
        """The covariance group (all layers with blocks of this ``M``) this layer belongs to."""
        return self.stats.group

    @property
    def slabs(self) -> slice:
        """This layer's covariances within its group's stacked buffers."""
        return slice(self.stats.lo, self.stats.hi)

    @property
    def rows_out(self) -> int:
        """Outputs per weight group and block, ``S_g``: the gradient matrices are ``(S_g, M)``."""
        return (
            cast(Tensor, self.module.weight).shape[0] * self.adapter.blocks // self.adapter.groups
        )


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

    ``eps`` is relative: the damping added to R is ``max(eps, eps_min) * trace(R) / M``, so one
    value suits layers whose inputs differ in scale by orders of magnitude, however small.
    """

    name = "layer"
    settings_type: ClassVar[type[WhiteningSettings]] = WhiteningSettings
    # the settings, copied onto the instance by __init__ (dtypes as torch dtypes)
    eps: float
    eps_min: float
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
        self.groups: list[CovarianceGroup] = []
        self.skipped: dict[str, str] = {}
        self.candidates: list[Candidate] = []
        self._handles: list[Any] = []
        self._step = 0
        self._collect = True  # step 0 gathers statistics
        self._pending = False  # a training forward pass ran since the last preconditioning
        self._folded = False  # statistics were folded at least once (host: a refresh can run)
        self._refreshed = False  # a refresh ran (host: the transform applies)
        self._warned: set[str] = set()
        self._rank = 0
        # rows are drawn on the device of the layer inputs: one generator per device
        self._generators: dict[str, torch.Generator] = {}
        self._generator_states: dict[str, Tensor] = {}
        self._timers = {"stats": 0.0, "decomposition": 0.0, "transform": 0.0}
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
        self._rank = rank
        self._generators = {}
        self.candidates = select(model, self.settings, gradient_transform=self.gradient_transform)
        self.layers, self.skipped = [], {}
        by_name: dict[str, WhitenedLayer] = {}
        owners: list[Candidate] = []
        aliases: list[Candidate] = []
        for cand in self.candidates:
            if cand.skip_reason is not None:
                if cand.skip_reason != "type not in layer_types":
                    self.skipped[cand.name] = cand.skip_reason
                continue
            assert cand.adapter is not None
            if cand.shares_weight_with is not None:
                aliases.append(cand)
                continue
            owners.append(cand)
        self._build_groups(owners, by_name)
        for cand in aliases:
            assert cand.shares_weight_with is not None and cand.adapter is not None
            by_name[cand.shares_weight_with].aliases.append((cand.name, cand.module, cand.adapter))
        for layer in self.layers:
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

    def _build_groups(self, owners: list[Candidate], by_name: dict[str, WhitenedLayer]) -> None:
        """One :class:`CovarianceGroup` per block size ``M``; within a group the layers are ordered
        by their gradient shape ``(S_g, M)``, so that each shape bucket is one contiguous run of
        the stacked buffers (and the gradient transform one batched product per bucket)."""
        by_dim: dict[int, list[Candidate]] = {}
        for cand in owners:
            assert cand.adapter is not None
            by_dim.setdefault(cand.adapter.dim, []).append(cand)

        def out_rows(c: Candidate) -> int:
            assert c.adapter is not None
            weight = cast(Tensor, c.module.weight)
            return weight.shape[0] * c.adapter.blocks // c.adapter.groups

        self.groups, made = [], {}
        for dim, members in by_dim.items():
            members = sorted(members, key=out_rows)  # stable: model order within a shape
            group = CovarianceGroup(
                dim,
                [c.adapter.groups for c in members if c.adapter is not None],
                self.momentum,
                self.center,
                self.stats_dtype,
            )
            self.groups.append(group)
            for index, cand in enumerate(members):
                assert cand.adapter is not None
                made[cand.name] = WhitenedLayer(
                    cand.name, cand.module, cand.adapter, group.member(index)
                )
        # layers in model order (logs, checkpoints); groups in order of first appearance
        self.layers = [made[c.name] for c in owners]
        by_name.update(made)

    def generator(self, device: torch.device) -> torch.Generator:
        """The row-sampling generator of ``device``, seeded by ``seed`` and the rank."""
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed + self._rank)
            saved = self._generator_states.pop(key, None)
            if saved is not None:
                gen.set_state(saved)
            self._generators[key] = gen
        return gen

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
                        gen = self.generator(x.device)
                        rows = adapter.rows(x, self.stats_max_rows, gen)
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
        """Whitened layers whose weights have gradients but whose statistics never arrived.

        Either their forward hooks never ran (the weight is used without calling the module,
        ``F.conv2d(x, conv.weight)``, or the forward pass runs a copy, a scripted or a compiled
        graph that bypasses module hooks), or every batch they saw was rejected as not finite.
        Such a layer keeps its identity preconditioner for ever. Reads the device's update counts
        (a host synchronisation: call it when logging, not in a step).
        """
        out = []
        for layer in self.layers:
            if layer.module.weight.grad is None or layer.stats.pending:
                continue
            if not layer.stats.fed or (
                self._folded and layer.group.ready and int(layer.stats.updates) == 0
            ):
                out.append(layer.name)
        return out

    def _never_fed(self) -> list[str]:
        """Layers with gradients whose forward hooks never ran (host facts only: no sync)."""
        return [
            layer.name
            for layer in self.layers
            if not layer.stats.fed and layer.module.weight.grad is not None
        ]

    def _warn_unfed(self) -> None:
        """After a statistics step: a layer that trains but is never whitened is said, once."""
        if "unfed" in self._warned:
            return
        unfed = self._never_fed()
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

    def _refresh_due(self, step: int) -> bool:
        """Host decision from the step counter: a refresh runs at every ``inverse_every``-th step
        from ``start_step`` on, and at the first step after the first statistics."""
        if step < self.start_step or not self._folded:
            return False
        return step % self.inverse_every == 0 or not self._refreshed

    def _commit(self, groups: list[CovarianceGroup] | None = None) -> None:
        """Fold the pending statistics of ``groups`` (all by default), summed over ranks."""
        todo = [g for g in (self.groups if groups is None else groups) if g.has_pending]
        if not todo:
            return
        with self._timed("stats"):
            if is_distributed():
                tensors = [t for g in todo for t in g.pending_tensors()]
                flat = torch.cat([t.reshape(-1) for t in tensors])
                torch.distributed.all_reduce(flat)
                torch._foreach_copy_(
                    tensors,
                    [
                        p.view_as(t)
                        for p, t in zip(flat.split([t.numel() for t in tensors]), tensors)
                    ],
                )
            for g in todo:
                g.fold()
            self._folded = True

    # ------------------------------------------------------------------------------ helpers
    @contextmanager
    def _timed(self, key: str):
        if torch.compiler.is_compiling():  # a host clock inside a traced graph would break it
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._timers[key] += time.perf_counter() - t0

    def group_damping(self, trace: Tensor, dim: int) -> Tensor:
        """Damping ``max(eps, eps_min) * trace / M`` per covariance, never below the dtype's
        smallest normal number (a zero covariance still factors)."""
        rel = max(self.eps, self.eps_min)
        return (trace * (rel / dim)).clamp_min(torch.finfo(trace.dtype).tiny)

    def damping(self, layer: WhitenedLayer) -> Tensor:
        """Per-group damping of ``layer`` (shape ``(G,)``): see :meth:`group_damping`."""
        assert layer.stats.trace is not None  # refreshes follow the first statistics
        return self.group_damping(layer.stats.trace, layer.adapter.dim)

    def decompose(self, layer: WhitenedLayer) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(evals, evecs, damping)`` of the damped covariance, or None when it fails (logging and
        the ``clip`` ablation only: an eigen-decomposition checks its result on the host)."""
        damping = self.damping(layer)
        assert layer.stats.cov is not None
        decomposed = damped_eigh(layer.stats.cov, damping, self.decomposition_dtype)
        if decomposed is None:
            return None
        return (*decomposed, damping)

    # ----------------------------------------------------------------------------- logging
    def failure_counts(self) -> dict[str, tuple[int, int]]:
        """Per layer: refreshes whose factorisation failed in the statistics' dtype and was
        rescued by a float64 retry, and refreshes that failed both ways (the layer kept its
        previous preconditioner). Read from the device: call it when logging."""
        return {}

    def metrics(self) -> dict[str, float]:
        """Per-layer condition numbers, seconds per phase, and the fallback and rejection counts.

        The per-phase timers restart at zero each call, so a logged value covers one log interval;
        the counts are cumulative. The counts live on the device and are read here, once per log
        line; here too each layer whose factorisation failed, or whose statistics were always
        rejected, is named in one warning.
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
        failures = self.failure_counts()
        out["whiten/fallbacks"] = float(sum(f for _, f in failures.values()))
        out["whiten/float64_retries"] = float(sum(r for r, _ in failures.values()))
        out["whiten/rejected_stats"] = float(
            sum(int(layer.stats.rejected) for layer in self.layers if layer.group.ready)
        )
        out["whiten/layers"] = float(len(self.layers))
        out["whiten/skipped_layers"] = float(len(self.skipped))
        for name, (retried, failed) in failures.items():
            if retried or failed:
                self._warn_once(
                    f"factor:{name}",
                    f"whitening '{self.name}': the factorisation of layer {name}'s damped "
                    f"covariance failed in {self.stats_dtype} at {retried + failed} refresh(es): "
                    f"{retried} rescued by a float64 retry, {failed} not (the layer kept its "
                    "previous preconditioner); larger whitening.eps makes it better conditioned",
                )
        if self._folded:
            starved = [
                layer.name
                for layer in self.layers
                if layer.stats.fed
                and layer.group.ready
                and int(layer.stats.updates) == 0
                and int(layer.stats.rejected) > 0
            ]
            if starved:
                self._warn_once(
                    "rejected",
                    f"whitening '{self.name}': every statistics batch of {', '.join(starved)} was "
                    "rejected as not finite, so they are not whitened (check their inputs)",
                )
        return out

    # ------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same preconditioner: statistics, per-layer
        state, the sampling generators and the counters. Symmetric matrices are stored as their
        upper triangles; pending sums and anything derived from the rest are not stored.
        """
        generators = {key: gen.get_state() for key, gen in self._generators.items()}
        generators.update({k: v for k, v in self._generator_states.items() if k not in generators})
        return {
            "algorithm": self.name,
            "step": self._step,
            "folded": self._folded,
            "refreshed": self._refreshed,
            "generators": generators,
            "layers": {
                layer.name: {
                    "stats": layer.group.state_dict(layer.stats.index),
                    "state": self._layer_state_dict(layer),
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
        self._folded = bool(state["folded"])
        self._refreshed = bool(state["refreshed"])
        self._generators = {}
        self._generator_states = dict(state["generators"])
        for layer in self.layers:
            saved = state["layers"][layer.name]
            layer.group.load_state_dict(layer.stats.index, saved["stats"])
            layer.kappa_r, layer.kappa_white = saved["kappa_r"], saved["kappa_white"]
            layer.refreshes = int(saved["refreshes"])
            self._load_layer_state(layer, saved["state"])

    # ------------------------------------------------------------------- algorithm specific
    def _init_layer(self, layer: WhitenedLayer) -> None:
        """Create the algorithm's per-layer state (identity preconditioner)."""

    def _layer_state_dict(self, layer: WhitenedLayer) -> dict[str, Any]:
        """The per-layer state for a checkpoint."""
        return layer.state.to_dict()

    def _load_layer_state(self, layer: WhitenedLayer, state: dict[str, Any]) -> None:
        """Restore the per-layer state from a checkpoint."""
        layer.state.load(state)
