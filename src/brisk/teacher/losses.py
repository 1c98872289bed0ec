"""The loss terms of knowledge distillation, on logits and feature maps (no teacher state).

    L = ce_weight * CE(z_s, y) + alpha * T^2 * mean_i g_i KL_i(softmax(z_t / T) || softmax(z_s / T))
        + beta * sum_l mean((A_l(f_s^l) - f_t^l)^2)

(Hinton et al., 2015; the T^2 keeps the soft-label gradients at the scale of the hard ones when T
changes). :func:`teacher_gate` is g_i (``teacher.gate``), :func:`distillation_kl` the soft-label
term and :func:`feature_mimic_loss` one term of the feature sum. None of them waits for the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    """1 for the samples the student may follow the teacher on, else 0 (see TeacherSettings.gate).

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
    t, h, w = (min(a, b) for a, b in zip(student_feature.shape[2:], teacher_feature.shape[2:]))
    size = (t, h, w)
    student = F.adaptive_avg_pool3d(student_feature.float(), size)
    teacher = F.adaptive_avg_pool3d(teacher_feature.float(), size)
    return F.mse_loss(student, teacher)
