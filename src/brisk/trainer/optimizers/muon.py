"""Muon on the hidden weights, an auxiliary optimizer on the rest, as one ``torch.optim`` object.

The published recipe (Jordan et al., "Muon: an optimizer for hidden layers in neural networks"):
``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 Newton-Schulz steps) orthogonalises the update of
every hidden weight with two or more dimensions; the input layer, the classifier, the norms and the
biases are not matrices whose singular directions mean anything, so AdamW (or SGD) steps them.

Why one wrapper object rather than two optimizers: the loop, the LR scheduler, the AMP scaler,
gradient clipping and the checkpoint each see exactly one ``Optimizer``. Its ``param_groups`` hold
the real parameters (so the scaler unscales and the whitening transforms the gradients the two
inner optimizers will read), the scheduler scales every group's ``lr`` from its own initial value,
and ``state_dict()`` holds both inner states, so a checkpoint resumes exactly with no change to the
loop or the checkpoint code.

``torch.optim.Muon`` accepts only 2-D parameters. A convolution weight ``(out, in, k, k[, k])`` is
handed to it as a 2-D view ``(out, in*k*k)`` that shares the parameter's storage: Muon's in-place
update of the view is the update of the weight. A channels-last weight is viewed with its columns
in memory order; orthogonalisation commutes with a permutation of columns, so the step is the same.

Limitation: ``whitening=feature`` re-maps the momentum buffers it finds in ``optimizer.state`` when
it refreshes its transform; Muon's buffers live in the inner optimizer, keyed by the views, so they
are not re-mapped (the gradient-transform whitenings, ``evd`` and ``recursive``, keep no such
state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import SGD, AdamW, Muon, Optimizer

from brisk.errors import UserError

log = logging.getLogger("brisk")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
AUX_KINDS = ("adamw", "sgd")
# the recipe's auxiliary learning rates, used when optimizer.aux_lr is null
AUX_DEFAULT_LR = {"adamw": 3e-4, "sgd": 0.1}


@dataclass
class ParamSplit:
    """Which parameter goes to which optimizer, by name (what is logged and tested)."""

    muon: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    aux_decay: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # input/output weights
    aux_no_decay: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # norms, biases

    def names(self) -> dict[str, list[str]]:
        """Parameter names per optimizer part, for the log and the tests of the split."""
        return {
            "muon": [n for n, _ in self.muon],
            "aux_decay": [n for n, _ in self.aux_decay],
            "aux_no_decay": [n for n, _ in self.aux_no_decay],
        }


def split_parameters(model: nn.Module) -> ParamSplit:
    """Hidden weights for Muon; the input layer, the classifier, norms and biases for the aux.

    The input layer is the first weight of two or more dimensions in registration order (the stem
    convolution of every model brisk builds); the classifier is the last ``nn.Linear`` (the last
    weight of two or more dimensions when there is none). Modules a teacher adds to the student
    after its classifier (feature adapters) are hidden layers and go to Muon.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()
    }
    matrices = [(n, p) for n, p in trainable if p.ndim >= 2 and id(p) not in norm_params]
    split = ParamSplit()
    if not matrices:
        split.aux_no_decay = trainable
        return split
    linears = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    output = linears[-1] if linears else matrices[-1][1]
    edge = {id(matrices[0][1]), id(output)}
    for name, param in trainable:
        if id(param) in norm_params or param.ndim < 2:
            split.aux_no_decay.append((name, param))
        elif id(param) in edge:
            split.aux_decay.append((name, param))
        else:
            split.muon.append((name, param))
    return split


def matrix_view(param: Tensor) -> Tensor:
    """A 2-D ``(out, rest)`` tensor sharing ``param``'s storage, outside autograd.

    The trailing dimensions are taken in memory order (largest stride first), so a channels-last
    weight also has a storage-sharing 2-D view; its columns are then a permutation of
    ``(in, k, k)`` order, which leaves Muon's orthogonalised step unchanged.
    """
    order = _memory_order(param)
    view = param.detach().permute(order)
    if not view.is_contiguous():
        raise ValueError(
            f"Muon needs a dense parameter to view as a matrix; got shape {tuple(param.shape)} "
            f"with strides {param.stride()}"
        )
    return view.reshape(param.shape[0], -1)


def _memory_order(param: Tensor) -> list[int]:
    return [0, *sorted(range(1, param.ndim), key=lambda d: -param.stride()[d])]


class MuonWithAux(Optimizer):
    """``torch.optim.Muon`` on ``hidden`` (as 2-D views), ``aux`` on the other groups.

    ``param_groups`` lists Muon's group first, then the auxiliary groups; each holds the real
    parameters and the hyperparameters of its inner optimizer, which are copied into the inner
    group before every step (so a scheduler's ``lr`` takes effect) and out of it after a load.
    """

    def __init__(
        self,
        hidden: Sequence[nn.Parameter],
        aux: Optimizer,
        muon_kwargs: dict[str, Any],
    ) -> None:
        self._params = list(hidden)
        self._views = [matrix_view(p) for p in self._params]
        self._orders = [_memory_order(p) for p in self._params]
        self.muon: Muon | None = Muon(self._views, **muon_kwargs) if self._views else None
        self.aux = aux
        inner = ([] if self.muon is None else self.muon.param_groups) + aux.param_groups
        params = [self._params] if self.muon is not None else []
        params += [list(g["params"]) for g in aux.param_groups]
        groups = [{**g, "params": p} for g, p in zip(inner, params)]
        super().__init__(groups, {})

    def _inner_groups(self) -> list[dict[str, Any]]:
        """Looked up each time: ``load_state_dict`` replaces an optimizer's group dicts."""
        muon_groups = [] if self.muon is None else self.muon.param_groups
        return muon_groups + self.aux.param_groups

    def _push_hyperparameters(self) -> None:
        for outer, inner in zip(self.param_groups, self._inner_groups()):
            for key, value in outer.items():
                if key != "params":
                    inner[key] = value

    def _pull_hyperparameters(self) -> None:
        for outer, inner in zip(self.param_groups, self._inner_groups()):
            for key, value in inner.items():
                if key != "params":
                    outer[key] = value

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of both optimizers: Muon on the hidden weights (their gradients viewed as
        matrices), the auxiliary optimizer on the rest; hyperparameters set on this optimizer's
        groups (a scheduler's lr) are pushed down first.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._push_hyperparameters()
        if self.muon is not None:
            for param, view, order in zip(self._params, self._views, self._orders):
                grad = param.grad
                view.grad = None if grad is None else grad.permute(order).reshape(view.shape)
            self.muon.step()
            for view in self._views:
                view.grad = None
        self.aux.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Both inner states; plain tensors and numbers, so ``weights_only`` loading reads it."""
        self._push_hyperparameters()
        return {
            "muon": None if self.muon is None else self.muon.state_dict(),
            "aux": self.aux.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state from another optimizer or model is a
        :class:`UserError`."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "aux"}:
            found = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise UserError(
                "checkpoint optimizer state: expected the muon optimizer's keys ['aux', 'muon'], "
                f"found {found}; was it written with another optimizer?"
            )
        if (state_dict["muon"] is None) != (self.muon is None):
            raise UserError(
                "checkpoint optimizer state: its Muon part does not match this model's hidden "
                "weights; was it written for another model?"
            )
        if self.muon is not None:
            self.muon.load_state_dict(state_dict["muon"])
        self.aux.load_state_dict(state_dict["aux"])
        self._pull_hyperparameters()


def muon_with_aux(
    model: nn.Module,
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    weight_decay: float = 0.01,
    adjust_lr_fn: str | None = None,
    aux: str = "adamw",
    aux_lr: float | None = None,
    aux_betas: Iterable[float] = (0.9, 0.95),
    aux_eps: float = 1e-10,
    aux_momentum: float = 0.9,
    aux_weight_decay: float = 0.01,
) -> MuonWithAux:
    """Build Muon + aux for ``model`` (the target of ``conf/optimizer/muon.yaml``) and log the
    split.

    Weight decay (``weight_decay`` for Muon, ``aux_weight_decay`` for the input and output weights)
    is decoupled and never applies to norms and biases, as for the other optimizers.
    """
    if aux not in AUX_KINDS:
        raise UserError(f"optimizer.aux must be one of {list(AUX_KINDS)}, got '{aux}'")
    split = split_parameters(model)
    aux_lr = AUX_DEFAULT_LR[aux] if aux_lr is None else aux_lr
    groups = [
        {"params": [p for _, p in split.aux_decay], "weight_decay": aux_weight_decay},
        {"params": [p for _, p in split.aux_no_decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UserError("optimizer=muon: the model has no parameter for the auxiliary optimizer")
    if aux == "adamw":
        betas = tuple(float(b) for b in aux_betas)
        aux_opt: Optimizer = AdamW(groups, lr=aux_lr, betas=betas, eps=aux_eps)  # type: ignore[arg-type]
    else:
        aux_opt = SGD(groups, lr=aux_lr, momentum=aux_momentum, nesterov=aux_momentum > 0)
    muon_kwargs = {
        "lr": lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "ns_steps": ns_steps,
        "weight_decay": weight_decay,
        "adjust_lr_fn": adjust_lr_fn,
    }
    optimizer = MuonWithAux([p for _, p in split.muon], aux_opt, muon_kwargs)
    _log_split(split, aux, aux_lr, lr)
    return optimizer


muon_with_aux.takes_model = True  # type: ignore[attr-defined]


def _log_split(split: ParamSplit, aux: str, aux_lr: float, lr: float) -> None:
    def count(params: list[tuple[str, nn.Parameter]]) -> str:
        return f"{len(params)} tensors, {sum(p.numel() for _, p in params):,} values"

    log.info("optimizer groups: Muon (lr %g) on hidden weights: %s", lr, count(split.muon))
    log.info(
        "optimizer groups: %s (lr %g) on input/output weights (decayed): %s",
        aux,
        aux_lr,
        ", ".join(n for n, _ in split.aux_decay) or "none",
    )
    log.info(
        "optimizer groups: %s (lr %g) on norms and biases (not decayed): %s",
        aux,
        aux_lr,
        count(split.aux_no_decay),
    )
    log.debug("Muon parameters: %s", ", ".join(n for n, _ in split.muon))
