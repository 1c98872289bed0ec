"""``+hparams_search=optuna``: hydra-optuna-sweeper's sweeper, with its SQLite study in the sweep.

Optuna creates the study before the launcher creates the sweep directory, so a SQLite file there
(``sqlite:///${hydra.sweep.dir}/optuna.db``) needs its folder made first. Defines nothing when the
``optuna`` extra is not installed (Hydra imports every module of ``hydra_plugins`` at start-up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import (  # type: ignore[import-untyped]
        OptunaSweeper as _OptunaSweeper,
    )
except ImportError:  # the optuna extra is not installed
    _OptunaSweeper = None

SQLITE_PREFIX = "sqlite:///"

if _OptunaSweeper is not None:

    class BriskOptunaSweeper(_OptunaSweeper):
        """Creates the folder of a ``sqlite:///PATH`` storage, then sweeps as the plugin does."""

        def sweep(self, arguments: list[str]) -> Any:
            """Create the storage's folder first: SQLite does not create a missing parent."""
            storage = self.sweeper.storage
            if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):
                path = storage[len(SQLITE_PREFIX) :]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
            return super().sweep(arguments)
