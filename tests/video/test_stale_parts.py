"""A killed preparation's ``.part`` files are removed by the next one, a live writer's never.

In a cache, which machines may share, a file touched within the hour is kept too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.video.conftest import tiny_shapes


def test_preparation_removes_part_files_of_dead_writers_only(tmp_path: Path) -> None:
    dm = tiny_shapes(tmp_path)
    dm.prepare()
    root = dm.cache.root
    clip = next(root.rglob("*.npy"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [
            clip.with_name(f".{clip.name}.part{dead.pid}"),  # an array being written
            root / f".manifest.json.part{dead.pid}",
            clip.with_name(f".{clip.stem}.part{dead.pid}.mp4"),  # a re-encode in progress
        ]
        kept = clip.with_name(f".{clip.name}.part{live.pid}")
        recent = root / f".labels.txt.part{dead.pid}"  # maybe another machine's live writer
        hour_ago = time.time() - 3700
        for path in [*stale, kept, recent]:
            path.write_bytes(b"x" * 1000)
            if path is not recent:
                os.utime(path, (hour_ago, hour_ago))
        report = tiny_shapes(tmp_path).prepare()
        assert report.prepared == 0  # everything was cached: only the debris went
        assert not any(p.exists() for p in stale)
        assert kept.exists() and recent.exists()
    finally:
        live.kill()
        live.wait()
