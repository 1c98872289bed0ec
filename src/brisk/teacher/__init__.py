"""Teacher-student training: a frozen teacher whose soft labels the student learns to mimic.

``settings`` holds the knobs (the schema of ``conf/teacher/*.yaml``), ``losses`` the loss terms,
``distill`` the teacher that applies them, ``networks`` the RGB network each ``teacher=`` builds.
"""

from brisk.teacher.base import NoTeacher, Teacher, TeacherContext
from brisk.teacher.distill import DistillationTeacher
from brisk.teacher.losses import distillation_kl, feature_mimic_loss, teacher_gate
from brisk.teacher.networks import DifferenceInput, RGBI3DTeacher, RGBMFNetTeacher
from brisk.teacher.settings import RGBI3DSettings, RGBMFNetSettings, TeacherSettings

__all__ = [
    "DifferenceInput",
    "DistillationTeacher",
    "NoTeacher",
    "RGBI3DSettings",
    "RGBI3DTeacher",
    "RGBMFNetSettings",
    "RGBMFNetTeacher",
    "Teacher",
    "TeacherContext",
    "TeacherSettings",
    "distillation_kl",
    "feature_mimic_loss",
    "teacher_gate",
]
