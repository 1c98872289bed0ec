"""Reading a re-encoded video GOP by GOP: I-frame, motion vectors, residuals and the RGB frames.

The reader seeks straight to the GOP it needs (key-frame index from a demux pass), so a clip late
in a video costs about what an early one costs, unlike CoViAR's decode-from-the-start loader.
Decoding is single-threaded whenever motion vectors are exported: multi-threaded decoding made
exported vectors non-deterministic on some streams.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from brisk.video.codec import KeyframeIndex, VideoDecodeError, keyframe_index
from brisk.video.motion import (  # noqa: F401 - MV_FIELDS is referenced by the docs
    MV_BORDERS,
    MV_FIELDS,
    MotionCompensator,
    frame_minus_prediction_u8,
    motion_vector_rows,
    rasterise,
    residual,
    residual_as_u8,
)

Residuals = Literal["none", "frame", "accumulated", "both"]

PICT_I, PICT_P, PICT_B = 1, 2, 3


@functools.lru_cache(maxsize=8)
def _compensator(height: int, width: int, cell: int, border: str) -> MotionCompensator:
    """Shared per frame size: its tables are read-only, and a data set of thousands of videos opens
    a new reader for nearly every clip (the tables cost about a millisecond per open)."""
    return MotionCompensator(height, width, cell, border)


class UnsupportedStreamError(VideoDecodeError):
    """The stream has B-frames (or backward vectors).

    Residuals against the previous frame would be wrong for it.
    """


@dataclass
class Gop:
    """One decoded GOP. ``n`` frames; arrays over P-frames have ``n - 1`` entries.

    - ``rgb``: ``uint8 (n, H, W, 3)``, frame 0 is the I-frame.
    - ``mv``: ``int16 (n-1, 2, H/cell, W/cell)`` per-P-frame ``dst - src`` (x, y) at block
      resolution; intra-coded blocks have no vector and read as zero motion.
    - ``mv_rows``: the exported vectors of every P-frame, ``int32 (N, 10)`` in :data:`MV_FIELDS`
      order.
    - ``residual``: ``int16 (n-1, H, W, 3)``, ``F_t - F_{t-1}(x - mv_t)`` (``residuals``
      "frame"/"both").
    - ``acc_residual``: ``int16 (n-1, H, W, 3)``, ``F_t - I(src_t(x))`` (CoViAR's accumulated
      residual).
    - ``acc_residual_u8``: the same quantised to ``clip(R + 128, 0, 255)`` (what the cache stores).
    - ``acc_mv``: ``int16 (n-1, H, W, 2)``, ``x - src_t(x)``: motion traced back to the I-frame.
    """

    index: int
    start_frame: int
    pict_types: list[int]
    rgb: np.ndarray | None
    mv: np.ndarray
    mv_rows: list[np.ndarray]
    residual: np.ndarray | None = None
    acc_residual: np.ndarray | None = None
    acc_residual_u8: np.ndarray | None = None
    acc_mv: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        """Real frames in this GOP, I-frame included; the last GOP of a video may be short."""
        return len(self.pict_types)


class GopReader:
    """Random access to the GOPs of one (re-encoded, I/P-only) video file.

    ``residuals``: which residuals to compute ("none" for motion vectors only). ``accumulated_mv``:
    also return the per-pixel motion traced back to the I-frame (the optional MV input channels).
    ``quantised_only``: keep only the uint8 accumulated residual (saves the int16 copy in the cache
    path). ``rgb=False`` with ``residuals="none"`` skips the pixel conversion: motion vectors only,
    the cheapest mode (``Gop.rgb`` is then None). ``mv_border``: ``skip`` (CoViAR's rule) or
    ``clamp`` for pixels whose motion vector points outside the frame (:mod:`brisk.video.motion`).
    """

    def __init__(
        self,
        path: str | Path,
        residuals: Residuals = "accumulated",
        accumulated_mv: bool = False,
        quantised_only: bool = False,
        cell: int | None = None,
        rgb: bool = True,
        mv_border: str = "skip",
        index: KeyframeIndex | None = None,
    ) -> None:
        if mv_border not in MV_BORDERS:
            raise ValueError(f"mv_border={mv_border!r}: expected one of {MV_BORDERS}")
        self.path = Path(path)
        self.mv_border = mv_border
        # A known index (kept by the cache's preparation) spares the demux pass over the whole file.
        self.index: KeyframeIndex = index or keyframe_index(self.path)
        self.residuals = residuals
        self.accumulated_mv = accumulated_mv
        self.quantised_only = quantised_only
        self.decode_rgb = rgb or residuals != "none" or accumulated_mv
        # MPEG-4 Part 2 predicts 16x16 or 8x8 blocks; H.264 goes down to 4x4.
        self.cell = cell or (8 if self.index.codec == "mpeg4" else 4)
        self.height, self.width = self.index.height, self.index.width
        self._compensator: MotionCompensator | None = None
        self._container = None

    @property
    def _mc(self) -> MotionCompensator:
        """Built on first use: its per-pixel index tables are not needed for motion vectors only."""
        if self._compensator is None:
            self._compensator = _compensator(self.height, self.width, self.cell, self.mv_border)
        return self._compensator

    @property
    def num_gops(self) -> int:
        """GOPs in the file, from the key-frame index; valid GOP numbers are 0 .. num_gops - 1."""
        return self.index.num_gops

    def close(self) -> None:
        """Release the open container; safe to call twice (the clip store closes evicted ones)."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> GopReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self):
        if self._container is None:
            try:
                self._container = av.open(str(self.path))
            except av.FFmpegError as exc:
                raise VideoDecodeError(f"{self.path}: {exc}") from exc
            stream = self._container.streams.video[0]
            stream.thread_type = "NONE"
            options = {"flags2": "+export_mvs"}
            if not self.decode_rgb:
                # Motion vectors come from the bitstream, not the pixels: skipping the inverse DCT
                # leaves them identical (checked in the tests) and saves ~15 % of the decode.
                options["skip_idct"] = "all"
            stream.codec_context.options = options
        return self._container

    def read_gop(self, g: int) -> Gop:
        """Seek to GOP ``g`` (a real key frame) and decode exactly its frames."""
        if not 0 <= g < self.num_gops:
            raise IndexError(f"{self.path}: GOP {g} out of range (the video has {self.num_gops})")
        container = self._open()
        stream = container.streams.video[0]
        start = self.index.keyframe_pts[g]
        wanted = self.index.gop_frames[g]
        try:
            container.seek(start, stream=stream, backward=True, any_frame=False)
            frames = []
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts < start:
                    continue
                frames.append(frame)
                if len(frames) == wanted:
                    break
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{self.path}: GOP {g}: {exc}") from exc
        if not frames:
            raise VideoDecodeError(f"{self.path}: GOP {g} decoded no frames")
        return self._process(g, frames)

    def iter_gops(self) -> Iterator[Gop]:
        """All GOPs in order with one sequential decode (the fast path for building a cache)."""
        container = self._open()
        stream = container.streams.video[0]
        container.seek(self.index.keyframe_pts[0], stream=stream, backward=True, any_frame=False)
        g, pending = 0, []
        try:
            for frame in container.decode(stream):
                pending.append(frame)
                if len(pending) == self.index.gop_frames[g]:
                    yield self._process(g, pending)
                    g, pending = g + 1, []
                    if g == self.num_gops:
                        return
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{self.path}: GOP {g}: {exc}") from exc
        if pending:
            yield self._process(g, pending)

    def _process(self, g: int, frames: list) -> Gop:
        types = [int(f.pict_type) for f in frames]
        if types[0] != PICT_I:
            raise VideoDecodeError(f"{self.path}: GOP {g} does not start with an I-frame ({types})")
        if PICT_B in types:
            raise UnsupportedStreamError(
                f"{self.path}: GOP {g} has B-frames; re-encode with brisk.video.codec.reencode"
            )
        n, h, w = len(frames), self.height, self.width
        rgb = None
        if self.decode_rgb:
            # one reformatter for the GOP: frame.to_ndarray(format=...) sets up a converter per
            # frame
            convert = VideoReformatter()
            rgb = np.stack([convert.reformat(f, format="rgb24").to_ndarray() for f in frames])
        rows = [motion_vector_rows(f) for f in frames[1:]]
        if any(r.size and (r[:, 0] > 0).any() for r in rows):
            raise UnsupportedStreamError(f"{self.path}: GOP {g} has backward motion vectors")
        mv = np.stack([rasterise(r, h, w, self.cell) for r in rows]) if rows else None
        if mv is None:
            mv = np.zeros((0, 2, -(-h // self.cell), -(-w // self.cell)), dtype=np.int16)
        gop = Gop(
            index=g,
            start_frame=sum(self.index.gop_frames[:g]),
            pict_types=types,
            rgb=rgb,
            mv=mv,
            mv_rows=rows,
        )
        mode = self.residuals
        if rgb is None or (mode == "none" and not self.accumulated_mv):
            return gop
        if mode in ("frame", "both"):
            res = np.empty((n - 1, h, w, 3), dtype=np.int16)
            for t in range(1, n):
                pred = self._mc.gather(rgb[t - 1], self._mc.source_index(mv[t - 1]))
                res[t - 1] = residual(rgb[t], pred)
            gop.residual = res
        if mode in ("accumulated", "both") or self.accumulated_mv:
            self._accumulate(gop, rgb, mv, need_residual=mode in ("accumulated", "both"))
        return gop

    def _accumulate(self, gop: Gop, rgb: np.ndarray, mv: np.ndarray, need_residual: bool) -> None:
        n, h, w = rgb.shape[0], self.height, self.width
        mc = self._mc
        src = mc.identity
        acc_u8 = np.empty((n - 1, h, w, 3), dtype=np.uint8) if need_residual else None
        acc = (
            None
            if (self.quantised_only or not need_residual)
            else np.empty((n - 1, h, w, 3), np.int16)
        )
        acc_mv = np.empty((n - 1, h, w, 2), dtype=np.int16) if self.accumulated_mv else None
        for t in range(1, n):
            field = mv[t - 1]
            if field.any():
                src = np.take(src, mc.source_index(field))
            if need_residual:
                pred = mc.gather(rgb[0], src)
                if acc is not None:
                    acc[t - 1] = residual(rgb[t], pred)
                    acc_u8[t - 1] = residual_as_u8(acc[t - 1])
                else:
                    acc_u8[t - 1] = frame_minus_prediction_u8(rgb[t], pred)
            if acc_mv is not None:
                acc_mv[t - 1] = mc.accumulated_motion(src)
        gop.acc_residual, gop.acc_residual_u8, gop.acc_mv = acc, acc_u8, acc_mv
