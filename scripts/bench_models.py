"""What MFCD-Net costs against its teacher and against CoViAR: parameters, FLOPs, CPU throughput.

Costs are counted by ``torch.utils.flop_counter`` at each model's standard input and per video with
the clip counts of each method's evaluation protocol (MFCD-Net: 15 GOP clips per UCF101 video;
CoViAR: 25 frames, one crop; I3D: 64-frame clips over an average UCF101 video of ~186 frames, i.e. 3
clips). Throughput runs the student and the teacher on the same 12-frame GOP clip, interleaved round
by round so that both see the same machine load, in both memory layouts (NCDHW and channels-last
NDHWC); only the ratios are meaningful across machines.

    python scripts/bench_models.py                    # table on stdout, JSON in outputs/bench/
    python scripts/bench_models.py --threads 2 --batch 2 --rounds 3 --size 224
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from brisk.models import create_model
from brisk.models.cost import ModelCost, format_cost_table, measure_cost

# Clips per video of each protocol (see the module docstring).
MFCD_CLIPS_PER_VIDEO = 15
COVIAR_CLIPS_PER_VIDEO = 25
I3D_CLIPS_PER_VIDEO = 3


def cost_rows(num_classes: int) -> list[ModelCost]:
    rows = [
        (
            "mfcd_net",
            create_model("mfcd_net", num_classes=num_classes),
            (3, 12, 224, 224),
            MFCD_CLIPS_PER_VIDEO,
        ),
        (
            "mfcd_net (I+R+MV, 5 ch)",
            create_model("mfcd_net", num_classes=num_classes, in_channels=5),
            (5, 12, 224, 224),
            MFCD_CLIPS_PER_VIDEO,
        ),
        (
            "coviar (R152 + 2×R18)",
            create_model("coviar", num_classes=num_classes),
            (5, 2, 224, 224),
            COVIAR_CLIPS_PER_VIDEO,
        ),
        (
            "i3d (64-frame clips)",
            create_model("i3d", num_classes=num_classes),
            (3, 64, 224, 224),
            I3D_CLIPS_PER_VIDEO,
        ),
        (
            "i3d teacher (GOP clip)",
            create_model("i3d", num_classes=num_classes),
            (3, 12, 224, 224),
            MFCD_CLIPS_PER_VIDEO,
        ),
        (
            "mfnet_rgb teacher (GOP clip)",
            create_model("mfnet_rgb", num_classes=num_classes),
            (3, 12, 224, 224),
            MFCD_CLIPS_PER_VIDEO,
        ),
    ]
    return [measure_cost(name, model, shape, clips) for name, model, shape, clips in rows]


MEMORY_FORMATS = {"ndhwc": torch.channels_last_3d, "ncdhw": torch.contiguous_format}


def throughput(
    models: dict[str, nn.Module],
    clip_shape: tuple[int, ...],
    batch: int,
    rounds: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Clips per second of every model in every memory layout, interleaved round by round (median).

    Wall time is what a user waits; CPU seconds (all threads of this process) are less disturbed
    when other jobs share the cores, so both are reported. Both memory layouts are measured because
    oneDNN picks different kernels for them, and MFNet's grouped 3D convolutions and I3D's dense
    ones do not gain alike from channels-last (NDHWC).
    """
    runs: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    x = torch.rand(batch, *clip_shape, device=device)
    for name, model in models.items():
        for fmt_name, fmt in MEMORY_FORMATS.items():
            runs[f"{name}, {fmt_name}"] = (
                copy.deepcopy(model).to(device, memory_format=fmt).eval(),
                x.to(memory_format=fmt),
            )
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu_times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for model, clip in runs.values():  # warm-up: allocator, oneDNN/cuDNN kernel choice
            model(clip)
        for _ in range(rounds):
            for name, (model, clip) in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                model(clip)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    return {
        name: {
            "median_s_per_batch": statistics.median(t),
            "clips_per_s": batch / statistics.median(t),
            "cpu_s_per_clip": statistics.median(cpu_times[name]) / batch,
            "rounds": len(t),
        }
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=101, help="classifier size (101 = UCF101)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="frame size of the throughput clip")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/bench_models.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    costs = cost_rows(args.classes)
    student = costs[0]
    print(
        f"## Cost per clip and per video ({args.classes} classes; "
        "FlopCounterMode, 1 MAC = 2 FLOPs)\n"
    )
    print(format_cost_table(costs, reference=student.name))

    device = torch.device(args.device)
    clip = (3, 12, args.size, args.size)
    models = {
        "mfcd_net (student)": create_model("mfcd_net", num_classes=args.classes),
        "i3d (teacher)": create_model("i3d", num_classes=args.classes),
    }
    load_before = os.getloadavg()[0]
    speed = throughput(models, clip, args.batch, args.rounds, device)
    load_after = os.getloadavg()[0]
    base = speed["mfcd_net (student), ndhwc"]["clips_per_s"]
    hw = (
        f"{args.device}, {args.threads} threads"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device)
    )
    print(
        f"\n## Inference throughput, {'×'.join(map(str, clip))} clips, batch {args.batch}, {hw} "
        f"(1-min load average {load_before:.1f} before, {load_after:.1f} after)\n"
    )
    print(
        "| model, layout | s / batch (median) | clips/s | videos/s (15 clips) | CPU s / clip "
        "| clips/s ÷ student (NDHWC) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in speed.items():
        print(
            f"| {name} | {s['median_s_per_batch']:.3f} | {s['clips_per_s']:.2f} | "
            f"{s['clips_per_s'] / MFCD_CLIPS_PER_VIDEO:.3f} | {s['cpu_s_per_clip']:.2f} | "
            f"{s['clips_per_s'] / base:.2f} |"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "classes": args.classes,
        "costs": [c.as_dict() for c in costs],
        "ratios_to_student": {
            c.name: {
                "params": c.params / student.params,
                "flops_per_video": c.flops_per_video / student.flops_per_video,
            }
            for c in costs
        },
        "throughput": {
            "clip_shape": list(clip),
            "batch": args.batch,
            "device": hw,
            "load_average_before_after": [load_before, load_after],
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "models": speed,
            "student_speedup_over_teacher": {
                fmt: speed[f"mfcd_net (student), {fmt}"]["clips_per_s"]
                / speed[f"i3d (teacher), {fmt}"]["clips_per_s"]
                for fmt in MEMORY_FORMATS
            },
        },
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
