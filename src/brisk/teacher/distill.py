"""Knowledge distillation from a frozen raw-RGB teacher into the compressed-domain student.

The student is trained on the loss of :mod:`brisk.teacher.losses`. The gate g_i (``teacher.gate``)
is 1 where the teacher may be followed: by default only where its prediction is the label, so a
weak teacher cannot teach its errors. Feature mimicking is optional: a 1x1x1 conv adapter A_l maps a
student stage to the teacher's width, and both maps are average-pooled to their common size. The
teacher sees ``batch["rgb"]``, the decoded RGB frames of the student's GOP in [0, 1], and
normalises them itself.

The teacher is never part of the student: it is not in the optimizer, not wrapped by DDP and not
in the student's checkpoint. Its :meth:`~DistillationTeacher.state_dict` records where the weights
came from and a hash of them, so a resumed run can verify it distils from the same teacher.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from brisk.models.mfnet3d import NormalizedInput
from brisk.models.pretrained import file_sha256, load_checkpoint_into, read_state_dict
from brisk.teacher.base import Teacher, TeacherContext
from brisk.teacher.losses import distillation_kl, feature_mimic_loss, teacher_gate
from brisk.teacher.settings import TeacherSettings
from brisk.whitening.base import Whitening

log = logging.getLogger("brisk")


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


class DistillationTeacher(Teacher):
    """A frozen RGB network whose logits (and optionally features) the student mimics.

    Subclasses say which network (:meth:`build_model`, returning a module that takes [0, 1] RGB)
    and which settings class holds their defaults (``settings_class``); everything else is shared.
    The knobs are a :class:`~brisk.teacher.settings.TeacherSettings`, given whole (``config=``)
    or as its fields (what Hydra passes from ``conf/teacher/*.yaml``): ``teacher.config.alpha``.

    ``whitening`` preconditions stage 1 (``whitening@teacher.whitening=recursive``), independently
    of the student's ``whitening=``. RGB networks trained from scratch on a small set memorise
    appearance; whitening their inputs lifts the faint frame-to-frame changes to the scale of
    appearance, so the teacher learns motion (docs/video.md).
    """

    # the dataclass whose defaults this network's teacher starts from (conf/teacher/<name>.yaml)
    settings_class: type[TeacherSettings] = TeacherSettings

    def __init__(
        self,
        config: TeacherSettings | None = None,
        whitening: Whitening | None = None,
        **fields: Any,
    ) -> None:
        fields.pop("_target_", None)
        if config is None:
            config = self.settings_class(**fields)
        elif fields:
            config = replace(config, **fields)
        self.config = config
        self.checkpoint = str(config.checkpoint) if config.checkpoint else None
        self.layers: dict[str, str] = dict(config.layers or {})
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
        self._adapters_moved: Tensor | None = None
        # Per class: how often the teacher predicted it on training batches, and how often rightly.
        self._predicted: Tensor | None = None
        self._right: Tensor | None = None

    @property
    def input_key(self) -> str:
        """The batch field the teacher reads (``teacher.input_key``)."""
        return self.config.input_key

    @property
    def epochs(self) -> int | None:
        """Length of stage 1 (``teacher.epochs``; None: ``trainer.epochs``)."""
        return self.config.epochs

    def stage_optimizer(self) -> dict[str, float]:
        """``teacher.lr`` and ``teacher.weight_decay`` where set (None keeps the run's)."""
        c = self.config
        return {k: v for k, v in (("lr", c.lr), ("weight_decay", c.weight_decay)) if v is not None}

    def stage_scheduler(self) -> dict[str, float]:
        """``teacher.warmup_epochs`` where set (None keeps the run's)."""
        w = self.config.warmup_epochs
        return {} if w is None else {"warmup_epochs": w}

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
            finetune = replaced if self.config.finetune == "auto" else bool(self.config.finetune)
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
        if self.config.init_student:
            self._initialise_student(student)
        if not self.layers or self.config.beta == 0:
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

    def _student_hook(self, layer: str, key: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            # Skip evaluation passes and shape-only (meta) passes such as FLOP counting.
            if (
                torch.is_grad_enabled()
                and self.adapters is not None
                and output.device.type != "meta"
            ):
                self._student_features[layer] = self.adapters[key](output)

        return hook

    def _teacher_hook(self, layer: str) -> Callable[..., None]:
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
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The training loss that replaces ``hard_loss`` (the student's CE), and its parts to log.

        Called by the training loop once per step after the student's forward, which is when the
        feature hooks have recorded this batch's maps; it clears them for the next step. Nothing
        here waits for the device: the parts are detached 0-d tensors and the gate's counters stay
        on the device, read only when the loop logs.
        """
        teacher_out = self.teacher_logits(batch)
        if teacher_out.shape != student_out.shape:
            raise ValueError(
                f"teacher '{self.name}' returned logits {tuple(teacher_out.shape)} but the student "
                f"{tuple(student_out.shape)}: teacher and student must share the label set"
            )
        c = self.config
        logs: dict[str, Tensor | float] = {"distill/ce": hard_loss.detach()}
        weight = None
        if c.gate != "none":
            if "target" not in batch:
                raise KeyError(f"teacher.gate={c.gate} needs batch['target'] (the labels)")
            target = batch["target"].to(teacher_out.device, non_blocking=True)
            weight = teacher_gate(
                teacher_out, target, c.gate, c.gate_confidence, self._reliable(teacher_out, target)
            )
            logs["distill/followed"] = weight.mean()
        kl = distillation_kl(student_out, teacher_out, c.temperature, weight)
        loss = c.ce_weight * hard_loss + c.alpha * kl
        logs["distill/kl"] = kl.detach()
        if c.beta > 0:
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
            assert isinstance(mimic, Tensor)
            loss = loss + c.beta * mimic
            logs["distill/feat"] = mimic.detach()
            self._snapshot_adapters()
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
        assert self._right is not None
        predicted = teacher_out.argmax(1)
        ones = torch.ones_like(predicted, dtype=self._predicted.dtype)
        self._predicted.index_add_(0, predicted, ones)
        self._right.index_add_(0, predicted, (predicted == target).to(ones.dtype))
        return self._right >= self.config.gate_precision * self._predicted.clamp(min=1)

    def _snapshot_adapters(self) -> None:
        """After 2 optimizer steps, record on the device whether the adapters moved.

        They do not when the student's optimizer was built before attach(). The flag is read (and
        warned about) only when the run checkpoints, in :meth:`state_dict`, so no step waits.
        """
        self._mimic_steps += 1
        if self._mimic_steps != 3 or self.adapters is None:
            return
        params = list(self.adapters.parameters())
        if any(p.grad is not None for p in params):
            moved = [
                (p.detach() != s.to(p.device, non_blocking=True)).any()
                for p, s in zip(params, self._adapter_snapshot)
            ]
            self._adapters_moved = torch.stack(moved).any()
        self._adapter_snapshot = []

    def _warn_if_adapters_still(self) -> None:
        if self._adapters_moved is None:
            return
        moved, self._adapters_moved = bool(self._adapters_moved), None
        if not moved:
            log.warning(
                "teacher '%s': feature-mimicking adapters are unchanged after 2 steps "
                "although they receive gradients: the student's optimizer was built before "
                "teacher.attach(student), so "
                "teacher.beta has no trained adapter to work through",
                self.name,
            )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Where the teacher came from and a hash of its weights; never the weights themselves.

        Called when the run checkpoints, which is also when the device-side check of the
        adapters is read.
        """
        self._warn_if_adapters_still()
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
