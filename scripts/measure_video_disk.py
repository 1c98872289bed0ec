"""Disk cost and preparation throughput of the compressed-domain re-encode, on real clips.

For every clip under ``--clips`` (default ``../shared/data/video``) and every setting (resolution x
quantiser), re-encodes the clip once and reports kB per frame of the output and frames per
CPU-second of the re-encode (``time.process_time``: every thread of this process, so the figure is
per core-second whatever threading the decoder chose). Settings run interleaved per clip, so the
ratios between them are measured side by side. ``--extract`` also times the clip extraction a
``cache_clips: true`` preparation adds (decode, motion vectors, accumulated residuals).

    python scripts/measure_video_disk.py [--clips DIR] [--out outputs/bench/video_disk.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from brisk.video.cache import clip_reader
from brisk.video.codec import reencode

SETTINGS = [  # (width, height, qscale)
    (340, 256, 1),
    (340, 256, 2),
    (340, 256, 4),
    (170, 128, 1),
]


def measure(clip: Path, tmp: Path, extract: bool) -> dict:
    rows = {}
    for w, h, q in SETTINGS:
        dst = tmp / f"{clip.stem}_{w}x{h}_q{q}.mp4"
        cpu = time.process_time()
        index = reencode(clip, dst, size=(w, h), qscale=q)
        cpu = time.process_time() - cpu
        row = {
            "frames": index.num_frames,
            "kb_per_frame": dst.stat().st_size / index.num_frames / 1000,
            "frames_per_cpu_s": index.num_frames / max(cpu, 1e-9),
        }
        if extract:
            cpu = time.process_time()
            with clip_reader(dst, motion_vectors=False) as reader:
                for _ in reader.iter_gops():
                    pass
            row["extract_frames_per_cpu_s"] = index.num_frames / max(
                time.process_time() - cpu, 1e-9
            )
        rows[f"{w}x{h}_q{q}"] = row
        dst.unlink()
    return rows


def main() -> None:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=default)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/video_disk.json"))
    parser.add_argument("--extract", action="store_true", help="also time clip extraction")
    parser.add_argument("--with-720p", action="store_true", help="include the 720p cockatoo clip")
    args = parser.parse_args()
    clips = sorted(p for p in args.clips.rglob("*") if p.is_file())
    if not args.with_720p:
        clips = [c for c in clips if "cockatoo" not in c.name]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            results[clip.name] = measure(clip, Path(tmp), args.extract)
            row = results[clip.name]
            print(
                f"{clip.name[:44]:44s} "
                + "  ".join(
                    f"{k}: {v['kb_per_frame']:5.1f} kB/f {v['frames_per_cpu_s']:5.0f} f/cpu-s"
                    for k, v in row.items()
                ),
                flush=True,
            )
    print("\nmedian over clips (and ratio to 340x256_q1, median of per-clip ratios)")
    base = "340x256_q1"
    for key in results[next(iter(results))]:
        kb = [r[key]["kb_per_frame"] for r in results.values()]
        fps = [r[key]["frames_per_cpu_s"] for r in results.values()]
        size_ratio = [r[key]["kb_per_frame"] / r[base]["kb_per_frame"] for r in results.values()]
        line = (
            f"{key:12s} kB/frame median {statistics.median(kb):5.1f} (range {min(kb):.1f}-"
            f"{max(kb):.1f}), x{statistics.median(size_ratio):.2f} of q1; frames/CPU-s median "
            f"{statistics.median(fps):.0f} (range {min(fps):.0f}-{max(fps):.0f})"
        )
        if args.extract:
            ext = [r[key]["extract_frames_per_cpu_s"] for r in results.values()]
            line += f"; extraction {statistics.median(ext):.0f} frames/CPU-s"
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
