"""Starting a video network from published weights: ``model.checkpoint=PATH``.

Every published video result starts from Kinetics weights; a 3D CNN trained from scratch on HMDB51's
3.6k videos falls far short. This module reads the layouts those weights come in and maps them onto
brisk's networks, whose module names follow the public code key for key:

- cypw/PyTorch-MFNet: ``{"state_dict": {"module.conv1.conv.weight": ...}, "epoch": ...}``;
- pytorch-i3d: a plain state dict (``rgb_imagenet.pt``, ``rgb_charades.pt``);
- brisk's own run checkpoints (``{"model": ...}``, teacher stages with a ``net.`` prefix).

Loading rules (:func:`load_checkpoint_into`): the classifier is replaced by a fresh one when the
class count differs; a 5-channel student (I-frame, residuals and two motion channels) gets its first
conv inflated from 3-channel RGB weights, the motion channels starting from the mean of the RGB
filters; any other shape mismatch is refused with an error that names the tensors. What was loaded,
replaced and missing is logged.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from brisk.errors import UserError
from brisk.run.checkpoint import read_checkpoint

log = logging.getLogger("brisk")


@dataclass(frozen=True)
class Layout:
    """Where a network keeps its classifier and first conv: the tensors a checkpoint may not fit.

    A network that takes published weights declares it as the class attribute
    ``checkpoint_layout``, so this module needs to know no network.
    """

    head_prefix: str
    stem_weight: str


@dataclass
class LoadReport:
    """What :func:`load_checkpoint_into` did, for the run log and the tests."""

    source: str
    loaded: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    checkpoint_classes: int | None = None

    @property
    def replaced_classifier(self) -> bool:
        """Whether the classifier starts fresh (the file had another class count)."""
        return bool(self.replaced)

    def summary(self) -> str:
        """One log line: tensors loaded, and which were replaced, inflated, missing or ignored."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.replaced:
            parts.append(
                f"classifier replaced (the file has {self.checkpoint_classes} classes): "
                + ", ".join(self.replaced)
            )
        if self.inflated:
            parts.append(
                "inflated to more input channels (extra channels = mean of the RGB filters): "
                + ", ".join(self.inflated)
            )
        if self.missing:
            parts.append(f"missing in the file, kept as initialised: {_short(self.missing)}")
        if self.ignored:
            parts.append(f"in the file but not in the model, ignored: {_short(self.ignored)}")
        return "; ".join(parts)


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def file_sha256(path: str | Path) -> str:
    """Content hash of a checkpoint, recorded so a resumed run can tell that the file changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A bare state dict from a checkpoint file, unwrapping the usual containers and prefixes.

    Accepts a plain state dict (pytorch-i3d), ``{"state_dict": ...}`` (cypw/PyTorch-MFNet and most
    trainers), ``{"model": ...}`` (brisk's run checkpoints), keys prefixed ``module.`` (saved from
    DataParallel/DDP) and keys prefixed ``net.`` (brisk's input-normalising wrapper of a teacher).
    """
    path = Path(path)
    obj: Any = read_checkpoint(path)  # the one reader: weights_only, one-line errors
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"checkpoint '{path}' holds no state dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if all(k.startswith("net.") for k in state):
        state = {k.removeprefix("net."): v for k, v in state.items()}
    return state


def layout_of(model: nn.Module) -> Layout:
    """The classifier prefix and first-conv weight that the network declares as its class's
    ``checkpoint_layout``; networks without one do not take published weights."""
    # read on the class: a wrapper's instance would forward the lookup to the network it wraps
    layout = getattr(type(model), "checkpoint_layout", None)
    if not isinstance(layout, Layout):
        raise UserError(
            f"model.checkpoint: {type(model).__name__} does not take published weights; "
            "use model=mfcd_net, mfnet_rgb or i3d"
        )
    return layout


def weights_module(model: nn.Module) -> nn.Module:
    """The module a checkpoint's tensors belong to: a wrapper (the teachers' input normalisation)
    names the network it wraps in its class's ``weights_in``; any other model is its own."""
    inner = getattr(type(model), "weights_in", None)
    return getattr(model, inner) if inner else model


def inflate_stem(weight: Tensor, in_channels: int) -> Tensor:
    """RGB filters ``(O, 3, ...)`` widened to ``in_channels``: each extra channel is the RGB mean.

    The motion channels of the 5-channel student have no pretrained counterpart; starting them from
    the mean RGB filter gives them the pretrained spatio-temporal structure at the scale of one
    colour channel, rather than noise next to tuned filters.
    """
    extra = weight.mean(dim=1, keepdim=True).expand(
        -1, in_channels - weight.shape[1], *weight.shape[2:]
    )
    return torch.cat([weight, extra], dim=1)


def load_checkpoint_into(
    model: nn.Module, state: dict[str, Tensor], source: str, strict: bool = False
) -> LoadReport:
    """Load ``state`` into ``model``: an MFNet-3D or an I3D, bare or behind its input normalisation.

    ``strict`` (teachers): every model tensor must come from the file (only ``num_batches_tracked``,
    absent from files older than PyTorch 0.4.1, and a replaced classifier may be missing) and the
    file may hold nothing else. Otherwise missing tensors keep their initialisation and extra ones
    are ignored, both logged. Shape mismatches other than the classifier and a 3 -> more channel
    stem are refused in both modes.
    """
    net = weights_module(model)
    layout = layout_of(net)
    own = net.state_dict()
    report = LoadReport(source)
    head_keys = [k for k in state if k.startswith(layout.head_prefix)]
    if any(k in own and state[k].shape != own[k].shape for k in head_keys):
        report.checkpoint_classes = int(state[head_keys[0]].shape[0])
        report.replaced = sorted(k for k in own if k.startswith(layout.head_prefix))
        state = {k: v for k, v in state.items() if not k.startswith(layout.head_prefix)}
    stem = state.get(layout.stem_weight)
    target = own.get(layout.stem_weight)
    if (
        stem is not None
        and target is not None
        and stem.shape != target.shape
        and stem.shape[1] == 3
        and target.shape[1] > 3
        and stem.shape[0] == target.shape[0]
        and stem.shape[2:] == target.shape[2:]
    ):
        state = {**state, layout.stem_weight: inflate_stem(stem, target.shape[1])}
        report.inflated = [layout.stem_weight]
    report.missing = sorted(
        k
        for k in set(own) - set(state)
        if not k.endswith("num_batches_tracked") and k not in report.replaced
    )
    report.ignored = sorted(set(state) - set(own))
    if strict and (report.missing or report.ignored):
        raise UserError(
            f"checkpoint '{source}' does not fit {type(net).__name__}: "
            f"missing {_short(report.missing, 8)}, unexpected {_short(report.ignored, 8)}"
        )
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise UserError(
            f"checkpoint '{source}' has shapes that do not fit this {type(net).__name__} "
            "(check width_mult: model.width_mult or teacher.width_mult, 1.0 for published "
            f"weights): {'; '.join(mismatched[:8])}"
            + (f" ... ({len(mismatched)} in all)" if len(mismatched) > 8 else "")
        )
    report.loaded = sorted(k for k in state if k in own)
    if not report.loaded:
        raise UserError(
            f"checkpoint '{source}' shares no tensor name with {type(net).__name__} "
            f"(file keys start {_short(sorted(state), 3)})"
        )
    net.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


def load_model_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """``model.checkpoint=PATH``: published or brisk weights as the start of training, logged."""
    report = load_checkpoint_into(model, read_state_dict(path), str(path))
    log.info("model.checkpoint: %s", report.summary())
    return report
