"""Speed of the compressed-domain pipeline, as ratios to a plain PyAV RGB decode of the same file.

For every clip (default: the real clips in ../shared/data/video) the source is re-encoded to MPEG-4
Part 2 (GOP 12, 340x256) and then, on the re-encoded file, these are timed side by side,
interleaved, median of ``--repeats`` rounds, single-threaded:

- ``decode``: decode every frame and convert it to RGB (``to_ndarray("rgb24")``): the baseline.
- ``mv``: motion vectors only (exported side data rasterised to a block field, no pixels).
- ``mv_res``: motion vectors + per-frame residuals (vs the previous frame).
- ``mv_acc``: motion vectors + accumulated residuals (vs the I-frame; what the cache stores).
- ``reencode``: the re-encode itself (source file to MPEG-4), against the decode of the source.
- ``clip``: one GOP as training needs it: ``extract`` (seek + decode + accumulate, no cache) against
  ``cached`` (read from the clip cache); also the first-vs-last GOP latency of extraction.

Targets: mv <= 0.7x decode; mv_acc <= 3x decode; a cached clip >= 20x faster than extracting it.

The loader part (``--part loader``) times what training sees, side by side in one run:

- DataLoader clips/s at 0, 1 and 2 workers (``--workers``), without and with a teacher (the
  teacher's ``rgb`` frames built or not), on training items of the real clips re-encoded at
  340x256, cropped to 224, extracted live from the re-encoded files (``cache_clips: false``, the
  default of the real data sets) with a cold open per item: each item is another video, as in a
  data set of thousands of videos;
- the student's training step (MFNet-3D, 3x12x224x224, channels-last, all cores) in clips/s.

It runs against whichever brisk is on the path, so ``PYTHONPATH=<older checkout>/src`` measures an
older loader with the same script. Writes JSON (``--out``) and prints Markdown tables.

    python scripts/bench_video.py --out bench_video.json                 # both parts
    python scripts/bench_video.py --part loader --out bench_loader.json  # loader and student step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from brisk.video.cache import CacheSettings, ClipStore, VideoCache, prepare
from brisk.video.codec import reencode
from brisk.video.reader import GopReader

DEFAULT_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"


def decode_rgb(path: Path) -> int:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "NONE"
        n = 0
        for frame in c.decode(s):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def read_all(path: Path, residuals: str, rgb: bool) -> None:
    with GopReader(path, residuals=residuals, rgb=rgb, quantised_only=True) as reader:
        for _ in reader.iter_gops():
            pass


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_clip(src: Path, work: Path, repeats: int) -> dict:
    dst = work / "videos" / f"{src.name}.mp4"
    frames = reencode(src, dst).num_frames
    modes = {
        "decode": lambda: decode_rgb(dst),
        "mv": lambda: read_all(dst, "none", rgb=False),
        "mv_res": lambda: read_all(dst, "frame", rgb=True),
        "mv_acc": lambda: read_all(dst, "accumulated", rgb=True),
        "src_decode": lambda: decode_rgb(src),
        "reencode": lambda: reencode(src, work / "tmp.mp4") and (work / "tmp.mp4").unlink(),
    }
    times = {k: [] for k in modes}
    for _ in range(repeats):
        for k, fn in modes.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {
        k: statistics.median(a / b for a, b in zip(times[k], times["decode"], strict=True))
        for k in ("mv", "mv_res", "mv_acc")
    }
    ratio["reencode"] = statistics.median(
        a / b for a, b in zip(times["reencode"], times["src_decode"], strict=True)
    )
    # Fastest round against fastest round: the uncontended cost when other jobs share the CPU.
    best = {k: min(v) for k, v in times.items()}
    ratio_best = {k: best[k] / best["decode"] for k in ("mv", "mv_res", "mv_acc")}
    ratio_best["reencode"] = best["reencode"] / best["src_decode"]

    # Clip latency: the cache against extraction, and the first against the last GOP.
    settings = CacheSettings()
    cached = VideoCache(work / "cache", settings)
    prepare(cached, [(src, src.name)])
    live = ClipStore(VideoCache(work / "cache", CacheSettings(clips=False)))
    store = ClipStore(cached)
    gops = len(cached.read_record(src.name)["gop_frames"])
    mid, last = gops // 2, max(gops - 2, 0)  # the last full GOP
    clip_t = {"extract": [], "cached": [], "first": [], "last": []}
    for _ in range(repeats * 3):
        clip_t["extract"].append(timed(lambda: live.load(src.name, mid)))
        clip_t["cached"].append(timed(lambda: store.load(src.name, mid)))
        clip_t["first"].append(timed(lambda: live.load(src.name, 0)))
        clip_t["last"].append(timed(lambda: live.load(src.name, last)))
    clip = {k: statistics.median(v) for k, v in clip_t.items()}
    clip_best = {k: min(v) for k, v in clip_t.items()}
    return {
        "clip": src.name,
        "frames": frames,
        "fps": {k: frames / med[k] for k in ("decode", "mv", "mv_res", "mv_acc", "reencode")},
        "ratio_to_decode": ratio,
        "ratio_to_decode_best": ratio_best,
        "clip_ms": {k: 1000 * v for k, v in clip.items()},
        "extract_over_cached": clip["extract"] / clip["cached"],
        "extract_over_cached_best": clip_best["extract"] / clip_best["cached"],
        "last_over_first_gop": clip["last"] / clip["first"],
    }


def _loader_api() -> dict:
    """What the brisk on the path offers: the loader of this checkout, or an older one."""
    import inspect

    from brisk.video import cache, datamodule

    params = inspect.signature(datamodule._ClipDataset.__init__).parameters
    return {
        "with_rgb": "with_rgb" in params,
        "keyframes": hasattr(cache, "keyframes_of"),
        "on_device": hasattr(datamodule.VideoDataModule, "on_device_batch"),
    }


def training_items(store, records: dict[str, dict], with_rgb: bool, items: int, api: dict):
    """TrainClips over the real clips, ``items`` long, consecutive items from different videos."""
    from brisk.video.cache import ClipStore  # noqa: F401 - the store passed in is one
    from brisk.video.datamodule import PreparedVideo, TrainClips

    names = sorted(records)
    videos = []
    for i in range(items):
        rec = records[names[i % len(names)]]
        extra = []
        if api["keyframes"]:
            from brisk.video.cache import keyframes_of

            extra.append(keyframes_of(rec))
        videos.append(PreparedVideo(rec["rel"], i % 8, tuple(rec["gop_frames"]), *extra))
    kw = {"with_rgb": with_rgb} if api["with_rgb"] else {}
    return TrainClips(videos, store, 224, "mfnet", flip=True, seed=0, **kw)


def loader_rate(dataset, workers: int, batch: int, rounds: int) -> float:
    """Clips/s through a DataLoader (first batch excluded: worker start-up is paid once per run)."""
    import multiprocessing

    from torch.utils.data import DataLoader

    # forkserver: a forked worker can inherit a lock some thread of this process held (seen here
    # as a worker that never starts once PyAV and torch had run in the parent)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        multiprocessing_context=multiprocessing.get_context("forkserver") if workers else None,
    )
    rates, cpu_rates = [], []
    for r in range(rounds):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(r)
        it = iter(loader)
        next(it)
        start, cpu, n = time.perf_counter(), time.process_time(), 0
        for b in it:
            n += len(b["target"])
        rates.append(n / (time.perf_counter() - start))
        cpu_rates.append(n / max(time.process_time() - cpu, 1e-9))
    # At 0 workers this process does all the work: clips per CPU-second is what one worker
    # delivers on a core of its own, whatever else the machine runs.
    return statistics.median(rates), statistics.median(cpu_rates) if workers == 0 else None


def student_step_rate(width: float, batch: int, steps: int) -> float:
    """Training-step clips/s of the student (MFNet-3D) at the published clip, channels-last."""
    from brisk.models import create_model

    model = create_model("mfcd_net", num_classes=101, width_mult=width)
    fmt = torch.channels_last_3d
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 12, 224, 224).contiguous(memory_format=fmt)
    y = torch.randint(0, 101, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def bench_loader(clips: list[Path], work: Path, args) -> dict:
    """DataLoader clips/s at each worker count, without and with a teacher, and the student step."""
    api = _loader_api()
    cache = VideoCache(work / "loader_cache", CacheSettings(clips=False))
    report = prepare(cache, [(src, src.name) for src in clips])
    store = ClipStore(cache)
    store.max_open = 1  # a cold open per item, as in a data set of thousands of videos
    rows = []
    for workers in args.workers:
        row = {"workers": workers}
        for teacher in (False, True):
            # Older loaders build rgb always: "without a teacher" is then the same work.
            ds = training_items(store, report.records, teacher, args.items, api)
            key = "teacher" if teacher else "no_teacher"
            row[key], cpu_rate = loader_rate(ds, workers, args.batch, args.rounds)
            if cpu_rate is not None:
                row[f"{key}_per_cpu_s"] = cpu_rate
        rows.append(row)
        print(f"loader {row}", flush=True)
    item = training_items(store, report.records, False, 1, api)[0]
    item_bytes = sum(v.numel() * v.element_size() for v in item.values() if torch.is_tensor(v))
    student = None
    if args.student_steps:
        torch.set_num_threads(os.cpu_count() or 1)
        student = student_step_rate(args.student_width, args.student_batch, args.student_steps)
        torch.set_num_threads(1)
    return {
        "api": api,
        "rows": rows,
        "item_bytes_no_teacher": item_bytes,
        "student_step_clips_per_s": student,
        "student_width": args.student_width,
    }


def print_loader(result: dict) -> None:
    rows = result["rows"]
    print(
        "\n| DataLoader workers | clips/s, no teacher | clips/s, with teacher "
        "| per worker (no / with) |"
    )
    print("|---:|---:|---:|---:|")
    for r in rows:
        w = max(r["workers"], 1)
        print(
            f"| {r['workers']} | {r['no_teacher']:.1f} | {r['teacher']:.1f} | "
            f"{r['no_teacher'] / w:.1f} / {r['teacher'] / w:.1f} |"
        )
    zero = next((r for r in rows if r["workers"] == 0 and "no_teacher_per_cpu_s" in r), None)
    if zero:
        a, b = zero["no_teacher_per_cpu_s"], zero["teacher_per_cpu_s"]
        print(
            f"\nper worker on a core of its own (clips per CPU-second at 0 workers): {a:.1f} "
            f"without a teacher, {b:.1f} with; x16 workers: {16 * a:.0f} and {16 * b:.0f} clips/s"
        )
    if result["student_step_clips_per_s"] is not None:
        print(
            f"student training step (mfcd_net width {result['student_width']}, 3x12x224x224, "
            f"{os.cpu_count()} threads): {result['student_step_clips_per_s']:.2f} clips/s"
        )
    print(
        f"item without a teacher: {result['item_bytes_no_teacher'] / 1e6:.2f} MB; "
        f"loader features: {result['api']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--skip", nargs="*", default=["imageio_cockatoo"], help="name fragments to skip"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_video.json"))
    parser.add_argument("--part", choices=["all", "codec", "loader"], default="all")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--items", type=int, default=48, help="loader items per round")
    parser.add_argument("--batch", type=int, default=4, help="loader batch size")
    parser.add_argument("--rounds", type=int, default=2, help="loader rounds (median)")
    parser.add_argument("--student-width", type=float, default=1.0)
    parser.add_argument("--student-batch", type=int, default=4)
    parser.add_argument("--student-steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()
    clips = sorted(
        p for p in args.clips.rglob("*") if p.is_file() and not any(s in p.name for s in args.skip)
    )
    if not clips:
        raise SystemExit(f"no clips under {args.clips}")
    loader = None
    if args.part in ("all", "loader"):
        with tempfile.TemporaryDirectory() as tmp:
            loader = bench_loader(clips, Path(tmp), args)
        loader["load_average"] = [load_at_start, os.getloadavg()]
        print_loader(loader)
        if args.part == "loader":
            args.out.write_text(json.dumps({"loader": loader}, indent=1))
            print(f"\nload average {load_at_start} at start, {os.getloadavg()} at end")
            return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in clips:
            rows.append(bench_clip(src, Path(tmp), args.repeats))
            r = rows[-1]
            print(
                f"{r['clip']}: {r['ratio_to_decode']} "
                f"extract/cached {r['extract_over_cached']:.1f}",
                flush=True,
            )
    summary = {
        k: float(np.median([r["ratio_to_decode"][k] for r in rows]))
        for k in ("mv", "mv_res", "mv_acc", "reencode")
    }
    summary["extract_over_cached"] = float(np.median([r["extract_over_cached"] for r in rows]))
    for k in ("mv", "mv_res", "mv_acc", "reencode"):
        summary[f"{k}_best"] = float(np.median([r["ratio_to_decode_best"][k] for r in rows]))
    summary["extract_over_cached_best"] = float(
        np.median([r["extract_over_cached_best"] for r in rows])
    )
    summary["last_over_first_gop"] = float(np.median([r["last_over_first_gop"] for r in rows]))
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "threads": 1,
            "av": av.__version__,
        },
        "repeats": args.repeats,
        "clips": rows,
        "median": summary,
        "loader": loader,
        "targets": {"mv": 0.7, "mv_acc": 3.0, "extract_over_cached": 20.0},
    }
    args.out.write_text(json.dumps(result, indent=1))

    print(
        "\n| clip | frames | decode fps | mv | mv + residual | mv + accumulated "
        "| re-encode (vs source decode) | extract ms | cached ms | extract / cached "
        "| last / first GOP |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q = r["ratio_to_decode"]
        c = r["clip_ms"]
        print(
            f"| {r['clip'][:40]} | {r['frames']} | {r['fps']['decode']:.0f} | {q['mv']:.2f} | "
            f"{q['mv_res']:.2f} | {q['mv_acc']:.2f} | {q['reencode']:.2f} | {c['extract']:.1f} | "
            f"{c['cached']:.2f} | {r['extract_over_cached']:.0f} | {r['last_over_first_gop']:.2f} |"
        )
    s = summary
    print(
        f"| **median of ratios** | | | **{s['mv']:.2f}** | {s['mv_res']:.2f} | "
        f"**{s['mv_acc']:.2f}** | {s['reencode']:.2f} | | | "
        f"**{s['extract_over_cached']:.0f}** | {s['last_over_first_gop']:.2f} |"
    )
    print(
        f"| **best round / best round** | | | **{s['mv_best']:.2f}** | {s['mv_res_best']:.2f} | "
        f"**{s['mv_acc_best']:.2f}** | {s['reencode_best']:.2f} | | | "
        f"**{s['extract_over_cached_best']:.0f}** | |"
    )
    print(
        f"\nload average {load_at_start} at start, {os.getloadavg()} at end, {os.cpu_count()} cores"
    )
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
