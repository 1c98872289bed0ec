"""A run directory: where each of its files lives, and the lock that gives it to one process.

Two ``train ... resume=auto`` started together on the same killed run would both continue it, write
the same checkpoints and append to the same ``metrics.csv``. :class:`RunLock` takes an exclusive
``fcntl.flock`` on ``<run>/.lock``; the kernel releases it when the process ends in any way (even
SIGKILL), so a stale lock never blocks a later resume. A second process refuses with the holder's
PID. The process that takes the lock removes the temporary files that killed writers left in the
directory (:mod:`brisk.tempfiles`): no other live process writes there.

The lock is the first thing a run takes: nothing is written into a run directory by a process that
does not hold it. Hydra would write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``
before the task function runs, so ``conf/hydra/default.yaml`` sets ``hydra.output_subdir: null``
and :func:`write_hydra_files` writes the same files once the lock is held; a refused second
process leaves the live run's record (which sweep summaries read) as it was.
"""

from __future__ import annotations

import fcntl
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from brisk.errors import UserError
from brisk.run.checkpoint import atomic_write
from brisk.run.distributed import DistInfo, broadcast_object
from brisk.tempfiles import RUN_TEMPORARY, remove_stale


@dataclass(frozen=True)
class RunPaths:
    """The files of one run (or of one stage of it, in a sub-directory)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        """Folder of ``last.pt``, ``best.pt`` and any named checkpoint."""
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """The checkpoint ``resume=auto`` continues from."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation metric (``task.monitor``)."""
        return self.checkpoints / "best.pt"

    def checkpoint(self, name: str) -> Path:
        """A named checkpoint in :attr:`checkpoints`."""
        return self.checkpoints / name

    @property
    def status(self) -> Path:
        """The run's outcome file (ok, failed, interrupted), read by sweep summaries."""
        return self.root / "status.json"

    @property
    def metrics(self) -> Path:
        """Every logged metric as one rectangular CSV."""
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard event files."""
        return self.root / "tensorboard"

    @property
    def lock(self) -> Path:
        """The file :class:`RunLock` holds; it contains the holder's process id."""
        return self.root / ".lock"

    def stage(self, name: str) -> RunPaths:
        """A stage of the run (the teacher of a video run) keeps its files in its own folder."""
        return RunPaths(self.root / name)

    def folders(self) -> list[Path]:
        """Every folder the run writes files into: its root, its checkpoints, and its stages'."""
        stages = [p for p in self.root.iterdir() if (p / "checkpoints").is_dir()]
        return [self.root, self.checkpoints, *(f for s in stages for f in (s, s / "checkpoints"))]


class RunDirectoryBusy(UserError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive, process-lifetime lock on a run directory; a no-op when ``enabled`` is false.

    Under ``torchrun`` only rank 0 locks: the ranks of one job share the directory by design.
    """

    def __init__(self, paths: RunPaths, enabled: bool = True) -> None:
        self.paths, self.enabled = paths, enabled
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirectoryBusy` naming the process that holds it."""
        if not self.enabled or self._file is not None:
            return
        self.paths.root.mkdir(parents=True, exist_ok=True)
        handle = self.paths.lock.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirectoryBusy(
                f"run directory {self.paths.root} is in use by process {holder} (lock "
                f"{self.paths.lock}); wait for it to end, stop it, or use another hydra.run.dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        remove_stale(self.paths.folders(), RUN_TEMPORARY)

    def release(self) -> None:
        """Let go of the lock (a process's exit also does)."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class lock_run_dir:  # noqa: N801 - used as a context manager, like a function
    """Rank 0 locks the run directory; every rank learns whether it got it (none waits alone)."""

    def __init__(self, paths: RunPaths, dist: DistInfo) -> None:
        self.lock, self.dist = RunLock(paths, enabled=dist.is_main), dist

    def __enter__(self) -> RunLock:
        refusal: object = None
        try:
            self.lock.acquire()
        except RunDirectoryBusy as exc:
            refusal = str(exc)
        if self.dist.enabled:
            refusal = broadcast_object(refusal)
        if refusal:
            raise RunDirectoryBusy(str(refusal))
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


HYDRA_SUBDIR = ".hydra"


def write_hydra_files(root: Path, task_cfg: object) -> None:
    """``.hydra/config.yaml`` (the task config), ``hydra.yaml`` and ``overrides.yaml``, as Hydra
    writes them: unresolved, so an interpolation (``${oc.env:...}``) is kept, not its value.

    Call it holding the run directory's lock, in a process that Hydra started.
    """
    folder = root / HYDRA_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "config.yaml": task_cfg,
        "hydra.yaml": HydraConfig.instance().cfg,  # {"hydra": ...}
        "overrides.yaml": HydraConfig.get().overrides.task,
    }
    for name, cfg in files.items():
        data = OmegaConf.to_yaml(cfg).encode()
        atomic_write(folder / name, functools.partial(_write_bytes, data))


def _write_bytes(data: bytes, file: IO[bytes]) -> None:
    file.write(data)
