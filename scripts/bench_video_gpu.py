"""Student against I3D on an accelerator, and the loader feeding the student: clips/s in one run.

Part 1 (models): the MFCD-Net student (MFNet-3D) and the I3D teacher on the same GOP clip
(3x12x224x224), and I3D on its published 64-frame clip, in bf16 autocast, NCDHW against
channels_last_3d: inference clips/s and training-step clips/s (forward, backward, SGD step).
CUDA-event timed, median of ``--rounds`` after warm-up.

Part 2 (loader feeding the student, needs PyAV): the training items of the real clips (re-encoded
340x256, crop 224, extracted live with a cold open per item, as the real data sets run) through a
DataLoader with pinned memory and persistent workers, finished on the device by the data module's
batch hook, and a student training step on each batch. Reported against the student's step alone,
at each ``--workers`` count: where the loader keeps up, the two rates agree.

    python scripts/bench_video_gpu.py --device cuda --out bench_video_gpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from brisk.models import create_model

DEFAULT_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
LAYOUTS = {"ncdhw": torch.contiguous_format, "ndhwc": torch.channels_last_3d}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(fn, clips_per_call: int, device: torch.device, warmup: int, calls: int, rounds: int):
    """Median clips/s over ``rounds`` of ``calls`` calls each, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        rates.append(calls * clips_per_call / (time.perf_counter() - start))
    return statistics.median(rates)


def model_rates(name: str, shape: tuple[int, ...], layout: str, args, device) -> dict:
    """Inference and training-step clips/s of one model at one clip shape and memory layout."""
    fmt = LAYOUTS[layout]
    model = create_model(name, num_classes=101).to(device, memory_format=fmt)
    x = torch.randn(args.batch, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 101, (args.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def infer() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            model(x)

    def train() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    inference = timed_rate(infer, args.batch, device, args.warmup, args.calls, args.rounds)
    model.train()
    training = timed_rate(train, args.batch, device, args.warmup, args.calls, args.rounds)
    return {
        "model": name,
        "clip": list(shape),
        "layout": layout,
        "infer": inference,
        "train": training,
    }


def loader_feeding(args, device) -> list[dict]:
    """Student training steps fed by the real loader, at each worker count."""
    from torch.utils.data import DataLoader

    from brisk.video.cache import CacheSettings, ClipStore, VideoCache, keyframes_of, prepare
    from brisk.video.clips import normalise_clip
    from brisk.video.datamodule import PreparedVideo, TrainClips

    clips = sorted(p for p in args.clips.rglob("*") if p.is_file() and "cockatoo" not in p.name)
    work = Path(tempfile.mkdtemp())
    cache = VideoCache(work, CacheSettings(clips=False))
    records = prepare(cache, [(c, c.name) for c in clips], workers=min(8, os.cpu_count() or 1))
    names = sorted(records.records)
    n = args.batch * (args.calls + args.warmup + 1)
    videos = []
    for i in range(n):
        rec = records.records[names[i % len(names)]]
        videos.append(
            PreparedVideo(rec["rel"], i % 101, tuple(rec["gop_frames"]), keyframes_of(rec))
        )
    store = ClipStore(cache)
    store.max_open = 1  # a cold open per item: each item another video, as in UCF101 or Kinetics
    fmt = torch.channels_last_3d
    model = create_model("mfcd_net", num_classes=101).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rows = []
    for workers in args.workers:
        dataset = TrainClips(videos, store, 224, "mfnet", seed=0, with_rgb=False)
        loader = DataLoader(
            dataset,
            batch_size=args.batch,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            drop_last=True,
            multiprocessing_context=multiprocessing.get_context("forkserver") if workers else None,
        )
        it = iter(loader)
        for _ in range(args.warmup):
            next(it)
        _sync(device)
        start, seen, wait = time.perf_counter(), 0, 0.0
        for _ in range(args.calls):
            t0 = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t0
            x = batch["input"].to(device, non_blocking=True)
            x = normalise_clip(x, "mfnet").contiguous(memory_format=fmt)
            y = batch["target"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        _sync(device)
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "workers": workers,
                "clips_per_s": seen / elapsed,
                "share_waiting_for_data": wait / elapsed,
            }
        )
        print(f"loader feeding the student: {rows[-1]}", flush=True)
        del it, loader
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[4, 8, 15])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_video_gpu.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    cases = [
        ("mfcd_net", (3, 12, 224, 224)),
        ("i3d", (3, 12, 224, 224)),
        ("i3d", (3, 64, 224, 224)),
    ]
    rows = []
    for name, shape in cases:
        for layout in LAYOUTS:
            rows.append(model_rates(name, shape, layout, args, device))
            print(rows[-1], flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "batch": args.batch,
        "models": rows,
    }
    print("\n| model | clip | layout | inference clips/s | training clips/s |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        clip = "x".join(map(str, r["clip"]))
        print(f"| {r['model']} | {clip} | {r['layout']} | {r['infer']:.0f} | {r['train']:.0f} |")
    student = {r["layout"]: r for r in rows if r["model"] == "mfcd_net"}
    gop_i3d = {r["layout"]: r for r in rows if r["model"] == "i3d" and r["clip"][1] == 12}
    for layout in LAYOUTS:
        s, t = student[layout], gop_i3d[layout]
        print(
            f"student / I3D on the GOP clip, {layout}: inference {s['infer'] / t['infer']:.2f}x, "
            f"training {s['train'] / t['train']:.2f}x"
        )
    if not args.skip_loader:
        try:
            import av  # noqa: F401
        except ImportError:
            print("PyAV is not installed: the loader part is skipped (pip install av)")
        else:
            result["loader"] = loader_feeding(args, device)
            alone = student["ndhwc"]["train"]
            print("\n| workers | student fed by the loader, clips/s | share waiting | alone |")
            print("|---:|---:|---:|---:|")
            for r in result["loader"]:
                print(
                    f"| {r['workers']} | {r['clips_per_s']:.0f} | "
                    f"{r['share_waiting_for_data']:.0%} | {alone:.0f} |"
                )
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
