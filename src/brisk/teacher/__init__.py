"""Teacher-student training: a frozen teacher whose soft labels the student learns to mimic."""

from brisk.teacher.base import NoTeacher, Teacher, TeacherContext
from brisk.teacher.distill import (
    DistillationTeacher,
    DistillConfig,
    RGBI3DTeacher,
    RGBMFNetTeacher,
    distillation_kl,
    feature_mimic_loss,
)

__all__ = [
    "DistillConfig",
    "DistillationTeacher",
    "NoTeacher",
    "RGBI3DTeacher",
    "RGBMFNetTeacher",
    "Teacher",
    "TeacherContext",
    "distillation_kl",
    "feature_mimic_loss",
]
