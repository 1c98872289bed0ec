"""Re-encoding any PyAV-readable video to CoViAR's format: MPEG-4 Part 2, GOP 12, I/P frames only.

Compressed-domain features depend on the codec: motion vectors only exist for predicted frames, and
B-frames or long GOPs make residuals meaningless. Every input is therefore re-encoded once, with
PyAV alone (no ffmpeg binary, no C extension): 340x256 by default (aspect ratio not kept, as CoViAR
does), fixed quantiser 1 (highest quality), audio dropped, scene-cut key frames off, in an MP4
container so the frame count and the key-frame index survive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

CODEC = "mpeg4"
DEFAULT_RATE = Fraction(25)


def fixed_quantiser(qscale: int) -> dict[str, str]:
    """Encoder options for a constant quantiser (``ffmpeg -q:v``).

    ``-q:v`` sets ``flags=+qscale`` and ``global_quality``, but FFmpeg's MPEG-4 encoder then reads
    the quantiser from each input frame's ``quality`` field, which PyAV frames do not carry: the
    output silently stays rate-controlled (measured: identical files for q = 1 and q = 31). Pinning
    ``qmin`` and ``qmax`` to the same value fixes the quantiser through the rate controller instead.
    """
    if not 1 <= int(qscale) <= 31:
        raise ValueError(f"qscale={qscale}: MPEG-4 quantisers are 1 (best) .. 31")
    return {"qmin": str(int(qscale)), "qmax": str(int(qscale))}


class VideoDecodeError(RuntimeError):
    """A file that cannot be used as a video: the message names the file and the reason."""


@dataclass(frozen=True)
class KeyframeIndex:
    """A file's GOP layout from one demux pass: where each GOP starts and how many frames it has."""

    keyframe_pts: tuple[int, ...]
    gop_frames: tuple[int, ...]
    width: int
    height: int
    codec: str

    @property
    def num_frames(self) -> int:
        """Frames in the file, as counted by the demuxer (not the container's declared count)."""
        return sum(self.gop_frames)

    @property
    def num_gops(self) -> int:
        """Number of GOPs, i.e. key frames: the units a clip is sampled from."""
        return len(self.gop_frames)


def keyframe_index(path: str | Path) -> KeyframeIndex:
    """Read packet headers only (no decoding) and group frames by the real key frames.

    GOP boundaries are never assumed to be multiples of 12: real files have shorter GOPs.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            keys: list[int] = []
            counts: list[int] = []
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                if packet.is_keyframe or not counts:
                    keys.append(int(packet.pts))
                    counts.append(0)
                counts[-1] += 1
            ctx = stream.codec_context
            return KeyframeIndex(tuple(keys), tuple(counts), ctx.width, ctx.height, ctx.name)
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{path}: {exc}") from exc


def is_reencoded(path: str | Path, size: tuple[int, int], gop_size: int) -> bool:
    """Whether ``path`` already has the layout :func:`reencode` produces (so it can be skipped)."""
    try:
        index = keyframe_index(path)
    except VideoDecodeError:
        return False
    return (
        index.codec == CODEC
        and (index.width, index.height) == tuple(size)
        and index.num_frames > 0
        and all(n == gop_size for n in index.gop_frames[:-1])
        and 0 < index.gop_frames[-1] <= gop_size
    )


def reencode(
    src: str | Path,
    dst: str | Path,
    size: tuple[int, int] = (340, 256),
    gop_size: int = 12,
    qscale: int = 1,
) -> KeyframeIndex:
    """Re-encode ``src`` into ``dst`` (an .mp4) and return the verified GOP layout of the result.

    Idempotent: an existing ``dst`` with the requested layout that is newer than ``src`` is kept.
    The output is written to a temporary name and renamed, so an interrupted run never leaves a
    half-written file behind. Every decoded frame becomes one output frame (variable-rate inputs
    such as GIFs are played at their average rate).
    """
    src, dst = Path(src), Path(dst)
    width, height = int(size[0]), int(size[1])
    if not src.is_file():
        raise VideoDecodeError(f"{src}: no such file")
    if (
        dst.exists()
        and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns
        and is_reencoded(dst, (width, height), gop_size)
    ):
        return keyframe_index(dst)
    if src.stat().st_size == 0:
        raise VideoDecodeError(f"{src}: empty file (0 bytes)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.part{os.getpid()}.mp4")
    try:
        _encode(src, tmp, width, height, gop_size, qscale)
        index = keyframe_index(tmp)
        bad = [i for i, n in enumerate(index.gop_frames[:-1]) if n != gop_size]
        if bad:
            raise VideoDecodeError(
                f"{src}: re-encoded GOPs are not all {gop_size} frames (GOP {bad[0]} has "
                f"{index.gop_frames[bad[0]]}); the encoder inserted extra key frames"
            )
        os.replace(tmp, dst)
        return index
    finally:
        tmp.unlink(missing_ok=True)


def _encode(src: Path, dst: Path, width: int, height: int, gop_size: int, qscale: int) -> None:
    try:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise VideoDecodeError(f"{src}: no video stream")
            istream = inp.streams.video[0]
            istream.thread_type = "AUTO"
            rate = istream.average_rate or istream.guessed_rate or DEFAULT_RATE
            rate = Fraction(rate).limit_denominator(65535)
            with av.open(str(dst), mode="w") as out:
                ostream = out.add_stream(CODEC, rate=rate)
                ostream.width, ostream.height = width, height
                ostream.pix_fmt = "yuv420p"
                ctx = ostream.codec_context
                ctx.gop_size = gop_size
                ctx.max_b_frames = 0
                ctx.time_base = 1 / rate
                ctx.options = {**fixed_quantiser(qscale), "sc_threshold": "1000000000"}
                count = 0
                for frame in inp.decode(istream):
                    img = frame.reformat(width=width, height=height, format="yuv420p")
                    img.pts = count
                    img.time_base = ctx.time_base
                    img.pict_type = 0  # let the encoder choose (NONE)
                    out.mux(ostream.encode(img))
                    count += 1
                if count == 0:
                    raise VideoDecodeError(f"{src}: no decodable video frames")
                declared = istream.frames or 0
                if declared and count < 0.9 * declared - 1:
                    # FFmpeg decodes what it can of a cut-off file without an error; the container's
                    # frame count (AVI, MKV) tells us the rest is missing.
                    raise VideoDecodeError(
                        f"{src}: truncated or corrupt: decoded {count} of the {declared} "
                        "frames the container declares"
                    )
                out.mux(ostream.encode(None))
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{src}: {exc}") from exc


def write_video(
    path: str | Path,
    frames,
    rate: int | Fraction = 25,
    codec: str = CODEC,
    gop_size: int = 12,
    qscale: int = 2,
) -> None:
    """Write ``uint8 (T, H, W, 3)`` RGB frames as a video file (atomically: temp name, then rename).

    Used by the synthetic data set and the tests; the container follows the file extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part{os.getpid()}{path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as out:
            stream = out.add_stream(codec, rate=Fraction(rate))
            stream.height, stream.width = int(frames[0].shape[0]), int(frames[0].shape[1])
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = gop_size
            stream.codec_context.max_b_frames = 0
            if codec == CODEC:
                stream.codec_context.options = fixed_quantiser(qscale)
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
