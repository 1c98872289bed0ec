"""Knowledge distillation from a frozen raw-RGB teacher into the compressed-domain student.

The student is trained on

    L = ce_weight * CE(z_s, y) + alpha * T^2 * mean_i g_i KL_i(softmax(z_t / T) || softmax(z_s / T))
        + beta * sum_l mean((A_l(f_s^l) - f_t^l)^2)

(Hinton et al., 2015; the T^2 keeps the soft-label gradients at the scale of the hard ones when T
changes). The gate g_i (``teacher.gate``) is 1 where the teacher may be followed: by default only
where its prediction is the label, so a weak teacher cannot teach its errors. The last term is
optional feature mimicking: a 1x1x1 conv adapter A_l maps a student stage to the teacher's width,
and both maps are average-pooled to their common size. The teacher sees ``batch["rgb"]``, the
decoded RGB frames of the student's GOP in [0, 1], and normalises them itself.

The teacher is never part of the student: it is not in the optimizer, not wrapped by DDP and not
in the student's checkpoint. Its :meth:`~DistillationTeacher.state_dict` records where the weights
came from and a hash of them, so a resumed run can verify it distils from the same teacher.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from brisk.models.i3d import InceptionI3d
from brisk.models.mfnet3d import NormalizedInput, mfnet_rgb
from brisk.models.pretrained import file_sha256, load_checkpoint_into, read_state_dict
from brisk.teacher.base import Teacher, TeacherContext
from brisk.whitening.base import Whitening

log = logging.getLogger("brisk")


def distillation_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    weight: Tensor | None = None,
) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch.

    ``weight`` (B,) scales each sample's term (the gate: 0 drops a sample); the mean is still over
    the whole batch.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    per_sample = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(1)
    if weight is not None:
        per_sample = per_sample * weight
    return per_sample.mean() * t * t


def teacher_gate(
    teacher_logits: Tensor,
    target: Tensor,
    gate: str,
    confidence: float = 0.5,
    reliable: Tensor | None = None,
) -> Tensor:
    """1 for the samples the student may follow the teacher on, else 0 (see DistillConfig.gate).

    ``reliable`` (one bool per class): whether the teacher's predictions of that class have been
    right often enough to follow; a sample counts only when its predicted class is reliable.
    """
    if gate == "none":
        return torch.ones(len(teacher_logits), device=teacher_logits.device)
    predicted = teacher_logits.argmax(1)
    keep = predicted == target
    if reliable is not None:
        keep &= reliable[predicted]
    if gate == "confident":
        p_label = teacher_logits.float().softmax(1).gather(1, target[:, None]).squeeze(1)
        keep &= p_label >= confidence
    return keep.float()


def feature_mimic_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared difference after pooling both (B, C, T, H, W) maps to their common size.

    Student and teacher may downsample differently (I3D halves time three times, MFNet once);
    pooling to the elementwise-smaller size compares the same regions of the clip.
    """
    if student_feature.shape[:2] != teacher_feature.shape[:2]:
        raise ValueError(
            f"feature mimicking: adapted student map {tuple(student_feature.shape)} "
            f"and teacher map {tuple(teacher_feature.shape)} differ in batch or channels"
        )
    size = tuple(min(a, b) for a, b in zip(student_feature.shape[2:], teacher_feature.shape[2:]))
    s = F.adaptive_avg_pool3d(student_feature.float(), size)
    t = F.adaptive_avg_pool3d(teacher_feature.float(), size)
    return F.mse_loss(s, t)


def weights_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's weights, independent of device and of how they were produced."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


GATES = ("none", "correct", "confident")


@dataclass(frozen=True)
class DistillConfig:
    """The knobs of ``conf/teacher/*.yaml`` (same names), checked once here.

    - ``checkpoint``: weights to load (a pytorch-i3d file, an MFNet-3D file, or a brisk run's
      ``checkpoints/best.pt``). Without one, the runner trains the teacher first (stage 1).
    - ``alpha``: weight of the KL term; ``temperature``: the softening T; ``ce_weight``: weight of
      the student's hard-label loss (0.5 with alpha 0.5 is Hinton's weighting).
    - ``gate``: which samples the KL term uses. ``none``: all. ``correct``: those whose label the
      teacher predicts (its argmax), provided its predictions of that class have been right at
      least ``gate_precision`` of the time over the training batches so far. ``confident``: as
      ``correct``, and with probability of the label at least ``gate_confidence``. A teacher is
      followed only where it is right, and never on a class it merely predicts for everything (a
      collapsed teacher is "right" on that class by accident); the KL is still averaged over the
      whole batch, so its weight shrinks with the share of samples the teacher may be followed on.
    - ``beta``: weight of feature mimicking (0 disables it); ``layers``: ``{student_module:
      teacher_module}`` pairs to mimic, e.g. ``{conv5: Mixed_5c}``.
    - ``num_frames``, ``width_mult``, ``dropout``: the teacher network's shape (width_mult < 1 for
      CPU runs). ``keep_time``: I3D without temporal strides (a 12-frame GOP keeps 12 time steps
      to Mixed_5c instead of 2); the public weights load either way.
    - ``input_key``: the batch field the teacher reads. ``epochs``: length of stage 1 (None:
      trainer.epochs). ``finetune``: with a checkpoint, also train the teacher in stage 1: ``auto``
      when its classifier was replaced, ``true`` always, ``false`` never.
    - ``init_student``: start the student from the teacher's weights wherever names and shapes agree
      (MFCD-Net's stage B starts from the raw-RGB MFNet; ``teacher=rgb_mfnet`` at the student's
      width matches every tensor).
    """

    checkpoint: str | None = None
    alpha: float = 1.0
    temperature: float = 4.0
    ce_weight: float = 1.0
    gate: str = "correct"
    gate_confidence: float = 0.5
    gate_precision: float = 0.5
    beta: float = 0.0
    layers: Mapping[str, str] | None = None
    num_frames: int = 12
    width_mult: float = 1.0
    dropout: float = 0.0
    keep_time: bool = False
    input_key: str = "rgb"
    epochs: int | None = None
    finetune: bool | str = "auto"
    init_student: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"teacher.temperature must be > 0, got {self.temperature}")
        if self.alpha < 0 or self.beta < 0 or self.ce_weight < 0:
            raise ValueError(
                "teacher.alpha, teacher.beta, teacher.ce_weight must be >= 0, got "
                f"{self.alpha}, {self.beta}, {self.ce_weight}"
            )
        if self.beta > 0 and not self.layers:
            raise ValueError(
                "teacher.beta > 0 needs teacher.layers, e.g. {conv5: conv5}: the layers to mimic"
            )
        if self.finetune not in ("auto", True, False):
            raise ValueError(f"teacher.finetune must be auto, true or false, got {self.finetune!r}")
        if self.gate not in GATES:
            raise ValueError(f"teacher.gate must be one of {GATES}, got {self.gate!r}")
        if not 0.0 <= self.gate_precision <= 1.0:
            raise ValueError(f"teacher.gate_precision must be in [0, 1], got {self.gate_precision}")
        if not 0.0 <= self.gate_confidence <= 1.0:
            raise ValueError(
                f"teacher.gate_confidence must be in [0, 1], got {self.gate_confidence}"
            )


class DistillationTeacher(Teacher):
    """A frozen RGB network whose logits (and optionally features) the student mimics.

    Subclasses say which network (:meth:`build_model`, returning a module that takes [0, 1] RGB) and
    how its classifier is named (``head_prefix``); everything else is shared. The knobs are a
    :class:`DistillConfig`, given whole (``config=``) or as its fields (what Hydra passes from
    ``conf/teacher/*.yaml``); they read as attributes (``teacher.alpha``).

    ``whitening`` preconditions stage 1 (``whitening@teacher.whitening=recursive``), independently
    of the student's ``whitening=``. RGB networks trained from scratch on a small set memorise
    appearance; whitening their inputs lifts the faint frame-to-frame changes to the scale of
    appearance, so the teacher learns motion (docs/video.md).
    """

    head_prefix = ""
    # Per-network defaults that differ from DistillConfig's (I3D was published with dropout 0.5).
    config_defaults: dict[str, Any] = {}

    def __init__(
        self,
        config: DistillConfig | None = None,
        whitening: Whitening | None = None,
        **fields: Any,
    ) -> None:
        if config is None:
            config = DistillConfig(**{**self.config_defaults, **fields})
        elif fields:
            config = replace(config, **fields)
        self.config = config
        self.checkpoint = str(config.checkpoint) if config.checkpoint else None
        self.layers = dict(config.layers or {})
        # Read by the runner: the preconditioner of stage 1 (None: plain SGD).
        self.whitening = whitening
        self.model: nn.Module | None = None
        self.device = torch.device("cpu")
        self.source: dict[str, Any] = {}
        self._hooks: list[RemovableHandle] = []
        self._student_features: dict[str, Tensor] = {}
        self._teacher_features: dict[str, Tensor] = {}
        self.adapters: nn.ModuleDict | None = None
        self._adapter_snapshot: list[Tensor] = []
        self._mimic_steps = 0
        # Per class: how often the teacher predicted it on training batches, and how often rightly.
        self._predicted: Tensor | None = None
        self._right: Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        # The config's fields read as attributes: teacher.alpha, teacher.epochs (read by the
        # runner).
        config = self.__dict__.get("config")
        if config is not None and name in DistillConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ building
    def build_model(self, num_classes: int) -> nn.Module:
        """The teacher network behind an input normalisation.

        It takes (B, 3, T, H, W) RGB in [0, 1].
        """
        raise NotImplementedError

    @property
    def network(self) -> nn.Module:
        """The bare teacher network (inside the normalisation).

        Feature mimicking hooks its modules.
        """
        if self.model is None:
            raise RuntimeError(f"teacher '{self.name}': call setup() before using the teacher")
        return self.model.net if isinstance(self.model, NormalizedInput) else self.model

    def setup(self, context: TeacherContext) -> None:
        """Load the checkpoint and/or have the runner fit the teacher (stage 1), then freeze it.

        A checkpoint whose classifier had to be replaced (another label set) leaves a random head,
        whose soft labels would only add noise; with ``finetune: auto`` such a teacher is fine-tuned
        from the loaded weights in stage 1 before it teaches.
        """
        model = self.build_model(context.num_classes)
        stage_dir = str(Path(context.run_dir) / "teacher")
        if self.checkpoint:
            net = model.net if isinstance(model, NormalizedInput) else model
            report = load_checkpoint_into(
                net, read_state_dict(self.checkpoint), self.checkpoint, strict=True
            )
            self.source = {
                "kind": "checkpoint",
                "path": self.checkpoint,
                "file_sha256": file_sha256(self.checkpoint),
            }
            replaced = report.replaced_classifier
            finetune = replaced if self.finetune == "auto" else bool(self.finetune)
            context.log(
                f"teacher {self.name}: loaded {self.checkpoint}"
                + (
                    f" (its {report.checkpoint_classes}-class classifier replaced by a fresh "
                    f"{context.num_classes}-class one)"
                    if replaced
                    else ""
                )
                + (
                    f"; fine-tuning it on '{self.input_key}' first (stage 'teacher')"
                    if finetune
                    else ""
                )
            )
            if replaced and not finetune:
                log.warning(
                    "teacher %s: teacher.finetune=false with a fresh classifier: "
                    "the student mimics "
                    "an untrained head",
                    self.name,
                )
            if finetune:
                model = context.fit(model, self.input_key, "teacher")
                self.source.update(kind="checkpoint+finetuned", finetuned_path=stage_dir)
        else:
            context.log(
                f"teacher {self.name}: no teacher.checkpoint, fitting it on '{self.input_key}' "
                "first (stage 'teacher')"
            )
            model = context.fit(model, self.input_key, "teacher")
            self.source = {"kind": "fitted", "path": stage_dir}
        self.device = context.device
        self.model = _freeze(model.to(context.device))
        self.source["weights_sha256"] = weights_sha256(self.model)

    def attach(self, student: nn.Module) -> None:
        """Feature mimicking: adapters join the student, hooks record maps.

        The adapters join the student so that its optimizer trains them. They are registered as
        ``student.distill_adapters`` and must exist before the student's optimizer is built. The
        adapter runs inside the student's forward hook, so under DDP it is part of the forward pass
        like any other student parameter.
        """
        self.detach()
        if self.init_student:
            self._initialise_student(student)
        if not self.layers or self.beta == 0:
            return
        student_channels = getattr(student, "feature_channels", None)
        teacher_channels = getattr(self.network, "feature_channels", None)
        if student_channels is None or teacher_channels is None:
            raise ValueError(
                "feature mimicking (teacher.beta > 0) needs models that list their "
                "feature_channels; "
                f"student {type(student).__name__} / teacher {type(self.network).__name__} do not"
            )
        adapters = nn.ModuleDict()
        for s_name, t_name in self.layers.items():
            if s_name not in student_channels:
                raise ValueError(
                    f"teacher.layers: student has no feature layer '{s_name}' "
                    f"(has {sorted(student_channels)})"
                )
            if t_name not in teacher_channels:
                raise ValueError(
                    f"teacher.layers: teacher has no feature layer '{t_name}' "
                    f"(has {sorted(teacher_channels)})"
                )
            key = s_name.replace(".", "_")
            adapters[key] = nn.Conv3d(
                student_channels[s_name], teacher_channels[t_name], 1, bias=False
            )
            self._hooks.append(
                student.get_submodule(s_name).register_forward_hook(self._student_hook(s_name, key))
            )
            self._hooks.append(
                self.network.get_submodule(t_name).register_forward_hook(self._teacher_hook(s_name))
            )
        param = next(student.parameters(), None)
        if param is not None:
            adapters.to(param.device)
        student.add_module("distill_adapters", adapters)
        self.adapters = adapters
        self._adapter_snapshot = [p.detach().clone() for p in adapters.parameters()]
        self._mimic_steps = 0

    def _initialise_student(self, student: nn.Module) -> None:
        """Copy every teacher tensor whose name and shape the student shares.

        This covers weights and BN statistics alike.
        """
        own = student.state_dict()
        source = self.network.state_dict()
        shared = [k for k, v in source.items() if k in own and own[k].shape == v.shape]
        if not shared:
            raise ValueError(
                f"teacher.init_student: student {type(student).__name__} "
                "shares no tensor (name and "
                f"shape) with teacher {type(self.network).__name__}; use teacher=rgb_mfnet with "
                "teacher.width_mult equal to model.width_mult"
            )
        with torch.no_grad():
            for key in shared:
                own[key].copy_(source[key])
        skipped = sorted(
            k for k in own if k not in shared and not k.endswith("num_batches_tracked")
        )
        log.info(
            "teacher %s: student initialised from the teacher (%d tensors%s)",
            self.name,
            len(shared),
            f"; kept its own {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}"
            if skipped
            else "",
        )

    def _student_hook(self, layer: str, key: str):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            # Skip evaluation passes and shape-only (meta) passes such as FLOP counting.
            if (
                torch.is_grad_enabled()
                and self.adapters is not None
                and output.device.type != "meta"
            ):
                self._student_features[layer] = self.adapters[key](output)

        return hook

    def _teacher_hook(self, layer: str):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            if output.device.type != "meta":
                self._teacher_features[layer] = output

        return hook

    def detach(self) -> None:
        """Remove the feature hooks, so a re-attach or a later forward records nothing stale."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # ------------------------------------------------------------------ training
    def teacher_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """Frozen teacher logits (B, classes), as float32, for ``batch[input_key]``.

        Runs without gradients; needs :meth:`setup` first and a batch that carries the decoded RGB.
        """
        if self.model is None:
            raise RuntimeError(f"teacher '{self.name}': call setup() before loss()")
        if self.input_key not in batch:
            raise KeyError(
                f"teacher '{self.name}' needs batch['{self.input_key}'] "
                "(decoded RGB frames of the clip); "
                f"the batch has {sorted(batch)}: "
                f"use a video data set that provides '{self.input_key}'"
            )
        rgb = batch[self.input_key].to(self.device, non_blocking=True)
        with torch.no_grad():
            return self.model(rgb).float()

    def loss(
        self, student_out: Tensor, batch: dict[str, Any], hard_loss: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """The training loss that replaces ``hard_loss`` (the student's CE), and its parts to log.

        Called by the training loop once per step after the student's forward, which is when the
        feature hooks have recorded this batch's maps; it clears them for the next step.
        """
        teacher_out = self.teacher_logits(batch)
        if teacher_out.shape != student_out.shape:
            raise ValueError(
                f"teacher '{self.name}' returned logits {tuple(teacher_out.shape)} but the student "
                f"{tuple(student_out.shape)}: teacher and student must share the label set"
            )
        c = self.config
        logs: dict[str, float] = {"distill/ce": hard_loss.item()}
        weight = None
        if c.gate != "none":
            if "target" not in batch:
                raise KeyError(f"teacher.gate={c.gate} needs batch['target'] (the labels)")
            target = batch["target"].to(teacher_out.device)
            weight = teacher_gate(
                teacher_out, target, c.gate, c.gate_confidence, self._reliable(teacher_out, target)
            )
            logs["distill/followed"] = weight.mean().item()
        kl = distillation_kl(student_out, teacher_out, c.temperature, weight)
        loss = c.ce_weight * hard_loss + c.alpha * kl
        logs["distill/kl"] = kl.item()
        if self.beta > 0:
            missing = [
                s
                for s in self.layers
                if s not in self._student_features or s not in self._teacher_features
            ]
            if missing:
                raise RuntimeError(
                    f"feature mimicking: no features recorded for {missing}; "
                    "was attach(student) called?"
                )
            mimic = sum(
                feature_mimic_loss(self._student_features[s], self._teacher_features[s])
                for s in self.layers
            )
            loss = loss + self.beta * mimic
            logs["distill/feat"] = mimic.item()
            self._check_adapters_train()
        self._student_features.clear()
        self._teacher_features.clear()
        return loss, logs

    def _reliable(self, teacher_out: Tensor, target: Tensor) -> Tensor:
        """Classes whose predictions by the teacher were right >= gate_precision so far (this
        batch included): the precision of each predicted class, counted on the training batches."""
        n = teacher_out.shape[1]
        if self._predicted is None or self._predicted.device != teacher_out.device:
            self._predicted = torch.zeros(n, device=teacher_out.device)
            self._right = torch.zeros(n, device=teacher_out.device)
        predicted = teacher_out.argmax(1)
        ones = torch.ones_like(predicted, dtype=self._predicted.dtype)
        self._predicted.index_add_(0, predicted, ones)
        self._right.index_add_(0, predicted, (predicted == target).to(ones.dtype))
        return self._right >= self.config.gate_precision * self._predicted.clamp(min=1)

    def _check_adapters_train(self) -> None:
        """Warn once if the adapters never move.

        That happens when the student's optimizer was built before attach().
        """
        self._mimic_steps += 1
        if self._mimic_steps != 3 or self.adapters is None:
            return
        params = list(self.adapters.parameters())
        if any(p.grad is not None for p in params) and all(
            torch.equal(p.detach(), s.to(p.device)) for p, s in zip(params, self._adapter_snapshot)
        ):
            log.warning(
                "teacher '%s': feature-mimicking adapters are unchanged after 2 steps "
                "although they receive gradients: the student's optimizer was built before "
                "teacher.attach(student), so "
                "teacher.beta has no trained adapter to work through",
                self.name,
            )
        self._adapter_snapshot = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Where the teacher came from and a hash of its weights; never the weights themselves."""
        return {"name": self.name, **self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """On resume: refuse to continue with a teacher whose weights differ from the run's."""
        saved = state.get("weights_sha256")
        current = self.source.get("weights_sha256")
        if saved and current and saved != current:
            raise ValueError(
                f"teacher '{self.name}': the run was distilled from teacher weights "
                f"{saved[:12]}... "
                f"({state.get('path')}) but now has {current[:12]}... ({self.source.get('path')}); "
                "resuming would switch teachers mid-run: restore that file or start a new run"
            )


class RGBI3DTeacher(DistillationTeacher):
    """Inception-v1 I3D on RGB (``teacher=rgb_i3d``).

    Public pytorch-i3d files load via ``checkpoint``.
    """

    name = "rgb_i3d"
    head_prefix = "logits."

    config_defaults = {"dropout": 0.5}

    def build_model(self, num_classes: int) -> nn.Module:
        """I3D behind a [-1, 1] input scaling, the range its public weights were trained on."""
        c = self.config
        net = InceptionI3d(num_classes, 3, c.num_frames, c.width_mult, c.dropout, c.keep_time)
        # I3D was trained on RGB scaled to [-1, 1]: (x - 0.5) / 0.5.
        return NormalizedInput(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class RGBMFNetTeacher(DistillationTeacher):
    """MFNet-3D on RGB (``teacher=rgb_mfnet``).

    It is the student's own architecture, so features align 1:1.
    """

    name = "rgb_mfnet"
    head_prefix = "classifier."

    def build_model(self, num_classes: int) -> nn.Module:
        """The student's RGB MFNet; ``keep_time`` is refused, it exists only in I3D."""
        if self.config.keep_time:
            raise ValueError("teacher.keep_time applies to teacher=rgb_i3d only")
        c = self.config
        return mfnet_rgb(num_classes, c.num_frames, c.width_mult, c.dropout)
