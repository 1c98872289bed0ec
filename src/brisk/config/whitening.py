"""The ``whitening=`` config group's schemas: the algorithms' own settings dataclasses.

``conf/whitening/{evd,feature,recursive}.yaml`` extend these nodes, so the YAML and the Python
constructors share one set of defaults (``brisk.whitening.settings``) and a misspelt key fails at
composition time.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass

from hydra.core.config_store import ConfigStore

from brisk.whitening.settings import EVDSettings, RecursiveSettings, WhiteningSettings

_NODES = {
    "feature": ("brisk.whitening.FeatureWhitening", WhiteningSettings),
    "evd": ("brisk.whitening.EVDWhitening", EVDSettings),
    "recursive": ("brisk.whitening.RecursiveWhitening", RecursiveSettings),
}


def register_whitening_schemas(cs: ConfigStore) -> None:
    """Store ``schema_whitening_<algorithm>``: the settings dataclass plus its ``_target_``."""
    for name, (target, settings) in _NODES.items():
        node = make_dataclass(
            f"{settings.__name__}Node",
            [("_target_", str, field(default=target))],
            bases=(settings,),
        )
        cs.store(name=f"schema_whitening_{name}", node=node)
