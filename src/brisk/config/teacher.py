"""The ``teacher=`` config group's schemas: the teachers' own settings dataclasses.

``conf/teacher/{rgb_i3d,rgb_mfnet}.yaml`` extend these nodes, so the YAML and the Python
constructors share one set of defaults (``brisk.teacher.settings``), a misspelt key fails at
composition time and ``brisk.config.validate`` runs the dataclass's checks before any work.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from brisk.teacher.settings import RGBI3DSettings, RGBMFNetSettings

_NODES = {
    "rgb_i3d": ("brisk.teacher.RGBI3DTeacher", RGBI3DSettings),
    "rgb_mfnet": ("brisk.teacher.RGBMFNetTeacher", RGBMFNetSettings),
}


def register_teacher_schemas(cs: ConfigStore) -> None:
    """Store ``schema_teacher_<name>``: the settings dataclass, its ``_target_`` and the
    ``whitening`` node of stage 1 (a ``whitening`` config of its own); outside the ``teacher``
    group, since a schema is no option to pick."""
    for name, (target, settings) in _NODES.items():
        node = make_dataclass(
            f"{settings.__name__}Node",
            [
                ("_target_", str, field(default=target)),
                ("whitening", Any, field(default=None)),
            ],
            bases=(settings,),
        )
        cs.store(name=f"schema_teacher_{name}", node=node)
