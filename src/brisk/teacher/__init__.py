"""Teacher-student training: a frozen teacher whose soft labels the student learns to mimic."""

from brisk.teacher.base import NoTeacher, Teacher, TeacherContext

__all__ = ["NoTeacher", "Teacher", "TeacherContext"]
