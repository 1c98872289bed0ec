"""Atomic, plain-typed checkpoints that restore a run exactly.

Everything is stored as tensors, numbers, strings, lists and dicts so
``torch.load(weights_only=True)`` reads the file; the resolved config travels as a YAML string.
Writes go to a temporary file in the same folder (a name unique to the writing process), are
fsync'ed and then renamed over the target, so a run killed while saving leaves the previous
checkpoint intact. A write that fails (a full disk, a quota, an I/O error) removes its temporary
file and raises :class:`StorageError`, naming the path and the space left.

:func:`read_checkpoint` is the one reader of checkpoint files (a resume, ``init_from``,
``model.checkpoint``, a teacher's weights, ``eval_only``): always ``weights_only=True``, and every
failure is one :class:`CheckpointError` naming the file and the reason. A brisk checkpoint of
another :data:`FORMAT_VERSION` is refused, naming the version that wrote it.

When ``best.pt`` and ``last.pt`` hold the same step, :func:`share_file` makes ``best.pt`` a second
name (a hard link) of ``last.pt``'s file instead of writing the same bytes twice; the next save of
``last.pt`` renames a new file over that name, so the linked ``best.pt`` keeps its step.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from brisk.errors import UnsafeFileError, UserError

#: The layout of a brisk checkpoint: :func:`read_checkpoint` refuses a file of another version.
FORMAT_VERSION = 1


class StorageError(UserError):
    """Writing a run's file failed for a reason outside brisk: no space, a quota, an I/O error."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, of another format version, or not a brisk one."""


class UnsafeCheckpoint(CheckpointError, UnsafeFileError):
    """A checkpoint holding Python objects that only a full unpickler (which runs code) rebuilds."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file whose bytes cannot be read back: empty, cut off, or not a torch file.

    A resume may fall back to another checkpoint of the same run (``best.pt``) when it meets one.
    """


def free_space(path: Path) -> str:
    """Free space on the file system holding ``path``, for error messages (``?`` when unknown)."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    except OSError:
        return "?"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write`` fills a temporary file beside ``path``, which then replaces ``path`` in one rename.

    The temporary name is unique per call (two processes never share one), and it is removed when
    the write fails, so a full disk leaves the previous file and no debris.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        cause = _os_error(exc)  # torch.save wraps the OSError of a failed write in a RuntimeError
        if cause is None:
            raise
        reason = errno.errorcode.get(cause.errno or 0, "I/O error")
        raise StorageError(
            f"could not write {path}: {cause.strerror or cause} ({reason}); "
            f"{free_space(path)} free there; the previous file is intact"
        ) from exc


def _os_error(exc: BaseException | None) -> OSError | None:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def share_file(source: Path, path: Path) -> None:
    """``path`` becomes another name of ``source``'s file (a hard link), replacing ``path`` at once.

    Where the file system has no hard links (or ``source`` lies on another one), ``path`` gets a
    copy instead, written through :func:`atomic_write`. Either way a reader of ``path`` never sees
    a partial file, and a later :func:`atomic_write` of ``source`` leaves ``path`` unchanged.
    """
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.link(source, tmp)
    except OSError:
        tmp.unlink(missing_ok=True)
        with source.open("rb") as src:
            atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path | str) -> Any:
    """The one reader of checkpoint files: ``torch.load(weights_only=True)`` onto the CPU.

    Returns what the file holds (a brisk checkpoint, or a bare state dict of published weights).
    Raises :class:`UnreadableCheckpoint` for a file that cannot be read back (empty, cut off, not a
    torch file) and :class:`CheckpointError` for a missing file or a brisk checkpoint of another
    :data:`FORMAT_VERSION`; each message names the file and the reason, not torch's traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableCheckpoint(
            f"checkpoint {path} could not be read: the file is empty (0 bytes), a save that was "
            "cut off before any byte was written"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and zip errors have many types; the path and reason count
        refused = re.search(
            r"WeightsUnpickler error: (.+?)(?: was not an allowed| Please|$)", str(exc)
        )
        if refused is not None:
            raise UnsafeCheckpoint(
                f"checkpoint {path} holds Python objects beyond tensors and plain types "
                f"({refused.group(1).strip()}); brisk reads only files that torch.load opens "
                "with weights_only=True, which never runs code from the file"
            ) from exc
        raise UnreadableCheckpoint(
            f"checkpoint {path} could not be read ({size} bytes; cut off, damaged or not a torch "
            f"file): {_reason(exc)}"
        ) from exc
    version = obj.get("format_version") if isinstance(obj, dict) else None
    if version is not None and version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was written in checkpoint format version {version}; this brisk "
            f"reads format version {FORMAT_VERSION}: use the brisk version that wrote it"
        )
    return obj


def _reason(exc: BaseException) -> str:
    """The first sentence of an error, or its type when it has no message."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= 200 else first[:197] + "..."


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A brisk checkpoint (a dict) through :func:`read_checkpoint`; anything else is refused."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} is not a brisk checkpoint: it holds a {type(obj).__name__}"
        )
    return obj


def config_fingerprint(config_yaml: str) -> str:
    """A short hash of the identity config: a resume compares it to tell whether it continues the
    same experiment.
    """
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """Every random stream a training step draws from, in weights_only-loadable types."""
    # the legacy tuple (the default); numpy's stubs type it as a union with the dict form
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, gauss = legacy
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.copy()),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; the CUDA streams only when CUDA is available here too."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
