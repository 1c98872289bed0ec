"""The on-disk cache: re-encoded videos and per-GOP clip arrays, a manifest and a failure report.

Layout under ``<cache_dir>/<variant>/`` (the variant names the encoding settings, so changing the
resolution or GOP size never mixes incompatible files)::

    videos/<rel>.mp4          re-encoded MPEG-4 Part 2, GOP ``gop_size``, I/P only
    clips/<rel>.rgb.npy       uint8 (G, T, H, W, 3)   decoded RGB frames of every GOP
                                                      (frame 0 = I-frame)
    clips/<rel>.res.npy       uint8 (G, T-1, H, W, 3) accumulated residuals, clip(R + 128, 0, 255)
    clips/<rel>.mv.npy        int8  (G, T-1, H, W, 2) accumulated motion (x, y), clipped to +-127 px
    records/<rel>.json        one record per source video, written last: its presence means "done"
    manifest.json             settings + every record, rewritten after each preparation
    failures.txt              undecodable videos with the reason, one per line

Short GOPs are padded to ``T`` frames by repeating the last frame (and its residual); the record
keeps the real frame count of every GOP. Each video is prepared by one worker and every file is
written under a temporary name and renamed, so an interrupted preparation resumes where it stopped
and never reads a half-written file. A failed video gets a record too (keyed by the source's size
and mtime): it is reported again, not retried, until the source file changes. A record keeps the
byte size of every file it stands for (``files``): an entry whose file was cut off or removed since
is prepared again, and one met damaged during training stops the run with
:class:`DamagedCacheError`, naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from brisk.errors import UnsafeFileError, UserError
from brisk.progress import TaskProgress
from brisk.video.codec import KeyframeIndex, reencode
from brisk.video.reader import Gop, GopReader

log = logging.getLogger("brisk.video")

RECORD_VERSION = 1
CLIP_KINDS = ("rgb", "res", "mv")


class DamagedCacheError(UserError):
    """A cached file is shorter than its record says, or unreadable: prepare it again.

    A DataLoader worker's exception reaches the main process rebuilt from its formatted traceback;
    only the original message's line is kept, so the error stays one line there too.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class CacheSettings:
    """What the cache holds; everything that changes the bytes on disk is in :attr:`variant`."""

    size: tuple[int, int] = (340, 256)
    gop_size: int = 12
    qscale: int = 1
    motion_vectors: bool = False
    clips: bool = True
    #: rule for motion vectors that point outside the frame; only the clip arrays depend on it, so
    #: it is kept in each record rather than in the variant (the re-encoded videos are shared)
    mv_border: str = "skip"

    @property
    def variant(self) -> str:
        """Directory under ``cache_dir``: settings that change the encoded bytes get their own."""
        return f"mpeg4_{self.size[0]}x{self.size[1]}_gop{self.gop_size}_q{self.qscale}"


@dataclass
class ClipArrays:
    """One GOP as the data sets consume it (see the module docstring for shapes)."""

    rgb: np.ndarray
    residual: np.ndarray
    motion: np.ndarray | None = None


def gop_to_clip(gop: Gop, frames: int, motion_vectors: bool) -> ClipArrays:
    """Pad/quantise a decoded GOP into fixed-length clip arrays.

    The cache and the live path share it, so both return identical arrays.

    A full GOP is returned without copying its arrays (the live path reads one per clip).
    """
    n = gop.num_frames
    h, w = gop.rgb.shape[1:3]
    k = min(n, frames) - 1
    if n >= frames:
        rgb = gop.rgb[:frames]
    else:
        rgb = np.empty((frames, h, w, 3), dtype=np.uint8)
        rgb[:n] = gop.rgb
        rgb[n:] = gop.rgb[-1]
    if k == frames - 1:
        res = gop.acc_residual_u8[:k]
    else:
        res = np.empty((frames - 1, h, w, 3), dtype=np.uint8)
        if k > 0:
            res[:k] = gop.acc_residual_u8[:k]
            res[k:] = gop.acc_residual_u8[k - 1]
        else:
            res[:] = 128
    motion = None
    if motion_vectors:
        motion = np.zeros((frames - 1, h, w, 2), dtype=np.int8)
        if k > 0:
            motion[:k] = np.clip(gop.acc_mv[:k], -127, 127)
            motion[k:] = motion[k - 1]
    return ClipArrays(rgb, res, motion)


def clip_reader(
    path: str | Path,
    motion_vectors: bool,
    mv_border: str = "skip",
    index: KeyframeIndex | None = None,
) -> GopReader:
    """A reader configured to produce exactly what :func:`gop_to_clip` needs.

    ``index``: the key frames recorded at preparation; without it the reader demuxes the file.
    """
    return GopReader(
        path,
        residuals="accumulated",
        accumulated_mv=motion_vectors,
        quantised_only=True,
        mv_border=mv_border,
        index=index,
    )


def keyframes_of(record: dict) -> KeyframeIndex | None:
    """The key-frame index a record kept (records written before it was kept have none)."""
    if "keyframe_pts" not in record:
        return None
    return KeyframeIndex(
        tuple(record["keyframe_pts"]),
        tuple(record["gop_frames"]),
        int(record["width"]),
        int(record["height"]),
        str(record["codec"]),
    )


@dataclass
class PrepareReport:
    """What one preparation did.

    ``records`` maps the relative name of every usable video to its record.
    """

    records: dict[str, dict] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    prepared: int = 0
    reused: int = 0
    seconds: float = 0.0


def source_folder_key(folder: str | Path) -> str:
    """``<folder name>-<8 hex digits of its absolute path>``: a cache sub-folder per source folder.

    Data sets whose videos can live in any folder (``video_folder``) key their cache by it, so two
    folders with the same settings, whose videos often share names (``<class>/1.mp4``), never share
    records, clips or a manifest.
    """
    resolved = Path(folder).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return f"{resolved.name or 'root'}-{digest}"


def _safe_rel(rel: str) -> str:
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or not parts:
        raise ValueError(f"video name {rel!r} must be a relative path inside the data set")
    return Path(rel).as_posix()


def _fingerprint(src: Path) -> dict:
    try:
        st = src.stat()
        return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"source_size": None, "source_mtime_ns": None}


def _atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_npy(path: Path) -> np.ndarray:
    # plain arrays only: a pickled object array in a shared cache would run code when loaded
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _npy_size_problem(path: Path, size: int) -> str | None:
    """Whether a ``.npy`` file holds the bytes its header promises (records without sizes)."""
    try:
        with path.open("rb") as fh:
            read = {(1, 0): npy_format.read_array_header_1_0}.get(
                npy_format.read_magic(fh), npy_format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
            expected = fh.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
    except (OSError, ValueError, EOFError) as exc:
        return f"unreadable header ({exc})"
    return None if size == expected else f"{size} bytes, its header needs {expected}"


def _damage(files: dict[str, Path], sizes: dict[str, int] | None) -> str | None:
    """What is wrong with a done entry's files, or None: missing, or not the recorded size."""
    for kind, path in files.items():
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path} is missing"
        if sizes is None:
            problem = _npy_size_problem(path, size) if path.suffix == ".npy" else None
        elif kind in sizes and size != sizes[kind]:
            problem = f"{size} bytes, {sizes[kind]} when it was written"
        else:
            problem = None
        if problem:
            return f"{path}: {problem}"
    return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, array)

    _atomic_write_bytes(path, write)


class VideoCache:
    """Paths and records of one cache variant; safe to use from several processes."""

    def __init__(self, cache_dir: str | Path, settings: CacheSettings) -> None:
        self.settings = settings
        self.root = Path(cache_dir) / settings.variant

    def video_path(self, rel: str) -> Path:
        """The re-encoded MPEG-4 file; ``rel`` is the source's name relative to the data root."""
        return self.root / "videos" / f"{rel}.mp4"

    def clip_path(self, rel: str, kind: str) -> Path:
        """The clip array of ``kind`` ``"rgb"``, ``"res"`` or ``"mv"`` (see the module layout)."""
        return self.root / "clips" / f"{rel}.{kind}.npy"

    def record_path(self, rel: str) -> Path:
        """The record file, written last: its existence marks the video as done (or failed)."""
        return self.root / "records" / f"{rel}.json"

    def read_record(self, rel: str) -> dict | None:
        """The stored record, or None when it is missing or unreadable (the video is redone)."""
        try:
            return json.loads(self.record_path(rel).read_text())
        except (OSError, ValueError):
            return None

    def _is_current(self, record: dict | None, src: Path) -> bool:
        s = self.settings
        if record is None or record.get("version") != RECORD_VERSION:
            return False
        if {k: record.get(k) for k in ("source_size", "source_mtime_ns")} != _fingerprint(src):
            return False
        if record["status"] == "failed":
            return True
        if s.clips and not record.get("has_clips"):
            return False
        if s.clips and record.get("mv_border", "clamp") != s.mv_border:
            return False
        if s.clips and s.motion_vectors and not record.get("has_mv"):
            return False
        damage = _damage(self._files(record["rel"]), record.get("files"))
        if damage:
            log.warning("%s: cache entry damaged (%s): preparing it again", record["rel"], damage)
        return damage is None

    def _files(self, rel: str) -> dict[str, Path]:
        """The files a done entry stands for under the current settings, by kind."""
        s = self.settings
        files = {"video": self.video_path(rel)}
        if s.clips:
            for kind in CLIP_KINDS[: 3 if s.motion_vectors else 2]:
                files[kind] = self.clip_path(rel, kind)
        return files

    def current_record(self, src: str | Path, rel: str) -> dict | None:
        """The record of a video that needs no work (done, or failed with an unchanged source)."""
        record = self.read_record(_safe_rel(rel))
        return record if self._is_current(record, Path(src)) else None

    def prepare_one(self, src: str | Path, rel: str) -> tuple[dict, bool]:
        """Re-encode and extract one video unless its record is current.

        Returns (record, reused).
        """
        src, rel = Path(src), _safe_rel(rel)
        record = self.read_record(rel)
        if self._is_current(record, src):
            return record, True
        s = self.settings
        start = time.perf_counter()
        record = {"version": RECORD_VERSION, "rel": rel, "source": str(src), **_fingerprint(src)}
        try:
            index = reencode(src, self.video_path(rel), s.size, s.gop_size, s.qscale)
            record.update(
                status="ok",
                num_frames=index.num_frames,
                gop_frames=list(index.gop_frames),
                keyframe_pts=list(index.keyframe_pts),
                width=index.width,
                height=index.height,
                codec=index.codec,
                has_clips=False,
                has_mv=False,
            )
            if s.clips:
                self._extract_clips(rel)
                record.update(has_clips=True, has_mv=s.motion_vectors, mv_border=s.mv_border)
            record["files"] = {k: p.stat().st_size for k, p in self._files(rel).items()}
        except Exception as exc:  # noqa: BLE001 - any failure of one video is reported, never fatal
            record.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        record["seconds"] = round(time.perf_counter() - start, 3)
        _atomic_write_bytes(
            self.record_path(rel), lambda tmp: tmp.write_text(json.dumps(record, indent=1))
        )
        return record, False

    def _extract_clips(self, rel: str) -> None:
        s = self.settings
        with clip_reader(self.video_path(rel), s.motion_vectors, s.mv_border) as reader:
            clips = [gop_to_clip(g, s.gop_size, s.motion_vectors) for g in reader.iter_gops()]
        if len(clips) != reader.num_gops:
            raise RuntimeError(f"{rel}: decoded {len(clips)} of {reader.num_gops} GOPs")
        _save_npy(self.clip_path(rel, "rgb"), np.stack([c.rgb for c in clips]))
        _save_npy(self.clip_path(rel, "res"), np.stack([c.residual for c in clips]))
        if s.motion_vectors:
            _save_npy(self.clip_path(rel, "mv"), np.stack([c.motion for c in clips]))

    def write_manifest(self, report: PrepareReport, name: str) -> None:
        """Rewrite manifest.json and failures.txt from ``report`` after a preparation.

        ``name`` is the data set's name as recorded in the manifest.
        """
        manifest = {
            "dataset": name,
            "settings": asdict(self.settings),
            "variant": self.settings.variant,
            "videos_ok": len(report.records),
            "videos_failed": len(report.failures),
            "records": [report.records[k] for k in sorted(report.records)],
            "failures": report.failures,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(
            self.root / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=1))
        )
        lines = [f"{f['source']}\t{f['reason']}" for f in report.failures]
        _atomic_write_bytes(
            self.root / "failures.txt",
            lambda tmp: tmp.write_text("".join(line + "\n" for line in lines)),
        )


def _prepare_in_worker(cache_dir: str, settings: CacheSettings, src: str, rel: str):
    return VideoCache(cache_dir, settings).prepare_one(src, rel)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _speed(prepared: int, seconds: float, remaining: int, workers: int) -> str:
    """The progress line's rate and ETA, once they mean something: nothing to prepare is said so
    (not "0.0 videos/s"), and the first videos (a worker's start-up, one long video) give no ETA."""
    if prepared == 0:
        return "all reused" if remaining == 0 else "preparing, ETA after the first videos"
    rate = prepared / max(seconds, 1e-9)
    if remaining == 0:
        return f"{rate:.1f} videos/s, done"
    if prepared < 2 * workers + 1:
        return f"{rate:.1f} videos/s, ETA after {2 * workers + 1} videos"
    return f"{rate:.1f} videos/s, ETA {_eta(remaining / rate)}"


def prepare(
    cache: VideoCache,
    jobs: Sequence[tuple[str | Path, str]],
    workers: int = 0,
    name: str = "video",
    progress_every: float = 10.0,
) -> PrepareReport:
    """Prepare every ``(source path, relative name)`` job; failures are reported, never raised.

    ``workers=0`` runs in this process (tests, tiny data sets); otherwise a pool of spawned
    processes shares the videos. Progress with an ETA is logged every ``progress_every`` seconds
    (plain log lines, no carriage returns, so the run's log file stays readable).
    """
    report = PrepareReport()
    start = time.perf_counter()
    total = len(jobs)
    last_log = work_start = start
    done = 0
    bar = TaskProgress(total, f"{name}: preparing", "video", sys.stderr)

    def account(record: dict, reused: bool) -> None:
        nonlocal done, last_log
        done += 1
        if record["status"] == "ok":
            report.records[record["rel"]] = record
        else:
            report.failures.append(
                {"rel": record["rel"], "source": record["source"], "reason": record["reason"]}
            )
        if reused:
            report.reused += 1
        else:
            report.prepared += 1
        bar.update()
        now = time.perf_counter()
        if (not reused and now - last_log >= progress_every) or done == total:
            last_log = now
            log.info(
                "%s: %d/%d videos (%d reused, %d failed), %s",
                name,
                done,
                total,
                report.reused,
                len(report.failures),
                _speed(report.prepared, now - work_start, total - done, max(workers, 1)),
            )

    todo = []
    for src, rel in jobs:
        record = cache.current_record(src, rel)
        if record is None:
            todo.append((src, rel))
        else:
            account(record, True)
    work_start = time.perf_counter()  # the rate counts the videos prepared now, from here
    if workers <= 0 or len(todo) <= 1:
        for src, rel in todo:
            account(*cache.prepare_one(src, rel))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(
                    _prepare_in_worker, str(cache.root.parent), cache.settings, str(s), r
                ): (
                    s,
                    r,
                )
                for s, r in todo
            }
            for fut in as_completed(futures):
                try:
                    account(*fut.result())
                except Exception as exc:  # noqa: BLE001 - a crashed worker loses only its videos
                    src, rel = futures[fut]
                    reason = f"worker process failed: {type(exc).__name__}: {exc}"
                    account(
                        {"rel": rel, "source": str(src), "status": "failed", "reason": reason},
                        False,
                    )
    bar.close()
    report.seconds = time.perf_counter() - start
    report.failures.sort(key=lambda f: f["rel"])
    cache.write_manifest(report, name)
    if report.failures:
        shown = "; ".join(f"{f['rel']}: {f['reason']}" for f in report.failures[:5])
        log.warning(
            "%s: %d of %d videos could not be used and are left out (see %s): %s%s",
            name,
            len(report.failures),
            total,
            cache.root / "failures.txt",
            shown,
            " ..." if len(report.failures) > 5 else "",
        )
    return report


class ClipStore:
    """Reads one GOP's clip arrays, from the cache arrays or live from the re-encoded video.

    Both paths return identical arrays (they share :func:`gop_to_clip`); the live path trades disk
    for decode time. Open files are kept per process (a small LRU), so DataLoader workers each get
    their own.
    """

    def __init__(self, cache: VideoCache, max_open: int = 32) -> None:
        self.cache = cache
        self.max_open = max_open
        self._open: dict[str, object] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def _get(self, key: str, make: Callable[[], object]):
        obj = self._open.pop(key, None)
        if obj is None:
            obj = make()
            if len(self._open) >= self.max_open:
                old = self._open.pop(next(iter(self._open)))
                if isinstance(old, GopReader):
                    old.close()
        self._open[key] = obj
        return obj

    def load(self, rel: str, gop: int, index: KeyframeIndex | None = None) -> ClipArrays:
        """One GOP's arrays.

        ``index`` (from the video's record) spares a live open its demux pass.
        """
        s = self.cache.settings
        if s.clips:
            rgb = self._array(rel, "rgb")
            res = self._array(rel, "res")
            mv = self._array(rel, "mv") if s.motion_vectors else None
            return ClipArrays(
                np.array(rgb[gop]), np.array(res[gop]), None if mv is None else np.array(mv[gop])
            )
        path = self.cache.video_path(rel)
        try:
            reader = self._get(rel, lambda: clip_reader(path, s.motion_vectors, s.mv_border, index))
            return gop_to_clip(reader.read_gop(gop), s.gop_size, s.motion_vectors)
        except (OSError, ValueError, EOFError) as exc:  # PyAV's errors are OSError/ValueError
            raise self._damaged(path, exc) from exc

    def _array(self, rel: str, kind: str) -> np.ndarray:
        path = self.cache.clip_path(rel, kind)
        try:
            return self._get(f"{rel}.{kind}", lambda: _load_npy(path))
        except (OSError, ValueError, EOFError) as exc:  # cut off: "mmap length is greater ..."
            if "Python objects" in str(exc) or "allow_pickle" in str(exc):
                raise UnsafeFileError(
                    f"the cached file {path} holds Python objects (a pickle), which brisk never "
                    "loads: it was not written by brisk; delete it and run prepare-video"
                ) from exc
            raise self._damaged(path, exc) from exc

    def _damaged(self, path: Path, exc: BaseException) -> DamagedCacheError:
        return DamagedCacheError(
            f"the cached file {path} is damaged ({type(exc).__name__}: {exc}); run prepare-video "
            "with this run's dataset overrides (or train again) to prepare it anew"
        )
