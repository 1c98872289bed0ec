"""Temporary files of writes in progress, and removing those whose writer is gone.

Every file brisk replaces atomically is first written under a temporary name that carries the
writing process's id: ``.tmp-<name>.<pid>.<random>`` for a run's files (checkpoints, status.json,
metrics.csv) and ``.<name>.part<pid>[.ext]`` for a video cache's. A process killed while writing
(SIGKILL, a node lost) leaves its temporary behind; checkpoint-sized ones add up. When a run or a
cache preparation starts, :func:`remove_stale` deletes the temporaries of its folder whose writer
is no longer alive, and never one of a live process (in a video cache, which machines may share,
only those untouched for an hour as well).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("brisk")

#: ``atomic_write``'s temporaries (brisk.run.checkpoint): ``.tmp-last.pt.<pid>.<8 hex>``.
RUN_TEMPORARY = re.compile(r"^\.tmp-.+\.(?P<pid>\d+)\.[0-9a-f]{8}$")
#: The video cache's temporaries (brisk.video.cache, brisk.video.codec): ``.<name>.part<pid>``,
#: optionally followed by the file's extension.
PART_TEMPORARY = re.compile(r"^\..+\.part(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")


def writer_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one owned by another user counts)."""
    if pid <= 0:
        return True  # not a process id a writer can have: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(
    folders: Iterable[Path],
    pattern: re.Pattern[str],
    recursive: bool = False,
    min_age_s: float = 0.0,
) -> int:
    """Delete the temporaries named like ``pattern`` in ``folders`` whose writer is gone.

    ``min_age_s``: also only files untouched for that long. A folder that processes on other
    machines may write into (a video cache on a shared file system) needs it, since a process id
    says nothing about another machine's processes; a run directory, held by its lock, does not.
    Returns the number removed; each removal is logged with its size. A file that vanishes
    meanwhile (its writer renamed it into place) is not an error.
    """
    now = time.time()
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        candidates = folder.rglob(".*") if recursive else folder.glob(".*")
        for path in candidates:
            match = pattern.match(path.name)
            if match is None or writer_alive(int(match["pid"])) or not path.is_file():
                continue
            try:
                stat = path.stat()
                if now - stat.st_mtime < min_age_s:
                    continue
                size = stat.st_size
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            log.info(
                "removed %s (%.1f MiB), left by process %s that is gone",
                path,
                size / 2**20,
                match["pid"],
            )
    return removed
