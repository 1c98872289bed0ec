"""What a model costs: parameters and FLOPs per clip and per video, counted by PyTorch itself.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on a forward pass, so every figure
follows the model as built (no hand-kept tables). The counter counts a multiply-add as 2 FLOPs and
skips BatchNorm, activations and pooling, so ``gmac = gflops / 2`` is comparable to the "GFLOPs" of
papers that count MACs (MFNet, most video papers). The pass runs on a ``meta`` copy of the model:
shapes only, no arithmetic, so counting I3D on a 64-frame 224 px clip takes a fraction of a second
on a CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Submodules that exist only for training (feature-mimicking adapters a teacher adds to the
# student); they never run at inference, so they are not part of what the model costs.
TRAINING_ONLY_MODULES = ("distill_adapters",)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters the model uses at inference (shared tensors counted once)."""
    skip = {
        id(p)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in TRAINING_ONLY_MODULES
        for p in module.parameters()
    }
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def clip_flops(model: nn.Module, clip_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one clip of shape ``clip_shape`` (C, T, H, W), batch size 1."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    clip = torch.empty((1, *clip_shape), device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(clip)
    return int(counter.get_total_flops())


def standard_clip_shape(model: nn.Module, size: int = 224) -> tuple[int, ...]:
    """The (C, T, H, W) clip a model was published with, from its ``standard_input_shape``."""
    shape_fn = getattr(model, "standard_input_shape", None)
    if shape_fn is None:
        raise TypeError(
            f"{type(model).__name__} has no standard_input_shape(); pass the clip shape explicitly"
        )
    return tuple(shape_fn(size))


@dataclass(frozen=True)
class ModelCost:
    """The cost of one model at one clip shape and a number of clips per video."""

    name: str
    params: int
    clip_shape: tuple[int, ...]
    flops_per_clip: int
    clips_per_video: float

    @property
    def flops_per_video(self) -> float:
        """FLOPs to classify one video: the per-clip cost times the protocol's clips per video."""
        return self.flops_per_clip * self.clips_per_video

    def as_dict(self) -> dict[str, float | int | str | list[int]]:
        """JSON-ready fields plus derived per-video FLOPs and GMACs, for benchmark and run logs."""
        d = asdict(self)
        d["clip_shape"] = list(self.clip_shape)
        d["flops_per_video"] = self.flops_per_video
        d["gmac_per_clip"] = self.flops_per_clip / 2e9
        d["gmac_per_video"] = self.flops_per_video / 2e9
        return d


def measure_cost(
    name: str,
    model: nn.Module,
    clip_shape: Sequence[int] | None = None,
    clips_per_video: float = 1.0,
) -> ModelCost:
    """Parameters and FLOPs of ``model``; ``clip_shape`` defaults to the model's standard input."""
    shape = tuple(clip_shape) if clip_shape is not None else standard_clip_shape(model)
    return ModelCost(
        name, count_params(model), shape, clip_flops(model, shape), float(clips_per_video)
    )


def cost_metrics(costs: Sequence[ModelCost]) -> dict[str, float]:
    """Flat scalars for a run's metrics or TensorBoard, e.g. ``cost/student/gflops_per_video``."""
    out: dict[str, float] = {}
    for c in costs:
        out[f"cost/{c.name}/params_m"] = c.params / 1e6
        out[f"cost/{c.name}/gflops_per_clip"] = c.flops_per_clip / 1e9
        out[f"cost/{c.name}/gflops_per_video"] = c.flops_per_video / 1e9
        out[f"cost/{c.name}/clips_per_video"] = c.clips_per_video
    if len(costs) >= 2:
        base, other = costs[0], costs[1]
        out[f"cost/{other.name}_over_{base.name}/params"] = other.params / base.params
        out[f"cost/{other.name}_over_{base.name}/flops_per_video"] = (
            other.flops_per_video / base.flops_per_video
        )
    return out


def format_cost_table(costs: Sequence[ModelCost], reference: str | None = None) -> str:
    """A Markdown table; with ``reference``, each row's ratio to it (how much more a row costs)."""
    ref = next((c for c in costs if c.name == reference), None) if reference else None
    head = (
        "| model | clip (C×T×H×W) | params (M) | GFLOPs/clip | GMAC/clip | clips/video "
        "| GMAC/video |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|"
    if ref is not None:
        head += f" params ÷ {ref.name} | GMAC/video ÷ {ref.name} |"
        rule += "---:|---:|"
    lines = [head, rule]
    for c in costs:
        row = (
            f"| {c.name} | {'×'.join(map(str, c.clip_shape))} | {c.params / 1e6:.2f} | "
            f"{c.flops_per_clip / 1e9:.2f} | {c.flops_per_clip / 2e9:.2f} | "
            f"{c.clips_per_video:g} | {c.flops_per_video / 2e9:.1f} |"
        )
        if ref is not None:
            row += f" {c.params / ref.params:.2f} | {c.flops_per_video / ref.flops_per_video:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def log_run_costs(
    student: nn.Module,
    student_clip: Sequence[int],
    clips_per_video: float,
    teacher: nn.Module | None = None,
    teacher_clip: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """At the start of a video run: log the student's (and teacher's) cost per clip and per video.

    The clip shapes are those of the run's own batches (one sample without the batch dimension), so
    the figures describe what this run computes, not the published resolution. Returns
    :func:`cost_metrics`.
    """
    costs = [measure_cost("student", student, student_clip, clips_per_video)]
    if teacher is not None:
        costs.append(
            measure_cost("teacher", teacher, teacher_clip or student_clip, clips_per_video)
        )
    log(
        "model cost per clip and per video (FlopCounterMode; 1 MAC = 2 FLOPs):\n"
        + format_cost_table(costs, "student")
    )
    return cost_metrics(costs)


def log_clip_costs(
    datamodule: Any, student: nn.Module, teacher: Any, log: Callable[[str], None] = print
) -> dict[str, float]:
    """For a run on clips: :func:`log_run_costs` on the shapes of the run's own first sample.

    ``datamodule`` is the run's :class:`~brisk.data.base.DataModule`, ``teacher`` its
    :class:`~brisk.teacher.base.Teacher`. Image runs (a 3-D sample) cost nothing to log: returns
    ``{}``.
    """
    sample = datamodule.train_dataset()[0]
    if not isinstance(sample, dict) or sample["input"].dim() != 4:
        return {}
    test_set = datamodule.test_dataset()
    videos = getattr(test_set, "videos", None)
    clips_per_video = len(test_set) / len(videos) if videos else 1.0
    teacher_model = teacher.model
    teacher_clip = tuple(sample[teacher.input_key].shape) if teacher_model is not None else None
    return log_run_costs(
        student,
        tuple(sample["input"].shape),
        clips_per_video,
        teacher_model,
        teacher_clip,
        log=log,
    )
