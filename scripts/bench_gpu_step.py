"""Side-by-side step time of SGD, ``evd``, ``recursive`` and Muon on one accelerator.

Two models in one process: brisk's CIFAR ResNet-20 at batch 128 on 32x32 inputs, and torchvision's
ResNet-50 at batch 64 on 224x224.  For each model the four arms (SGD with no whitening, SGD with
``evd``, SGD with ``recursive``, Muon + AdamW) step in interleaved rounds of one whole cadence
cycle (20 steps), so every arm sees the same machine state and its periodic work; the clock is read
and the device synchronised only at round boundaries, so a step that waits for the host shows up
as lost time.  Printed: seconds per step and the ratio to SGD's, per model.  Sized to finish
within 8 minutes on one H100; ``--smoke`` runs tiny sizes on the CPU (tested).

    python scripts/bench_gpu_step.py                  # on the GPU
    python scripts/bench_gpu_step.py --smoke          # a few seconds on the CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from brisk.models import create_model
from brisk.trainer.optimizers.muon import muon_with_aux
from brisk.whitening import EVDWhitening, NoWhitening, RecursiveWhitening

ARMS = ("sgd", "evd", "recursive", "muon")
CYCLE = 20  # lcm of the default statistics (10) and refresh (20, recursive 10) periods


def _arm(name: str, base: nn.Module, device: torch.device) -> dict:
    model = copy.deepcopy(base).to(device)
    whitening = {"evd": EVDWhitening, "recursive": RecursiveWhitening}.get(name)
    w = whitening(model) if whitening else NoWhitening()
    if name == "muon":
        opt: torch.optim.Optimizer = muon_with_aux(model)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return {"model": model, "w": w, "opt": opt, "step": 0, "times": []}


def _step(arm: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    step = arm["step"]
    arm["w"].begin_step(step)
    arm["opt"].zero_grad(set_to_none=True)
    nn.functional.cross_entropy(arm["model"](x), y).backward()
    arm["w"].precondition(step)
    arm["opt"].step()
    arm["step"] += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    name: str,
    base: nn.Module,
    batch: int,
    image: int,
    rounds: int,
    steps: int,
    device: torch.device,
    classes: int,
) -> dict:
    """Seconds per step of every arm on ``base``, interleaved rounds of ``steps`` steps."""
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(classes, (batch,), device=device)
    arms = {arm: _arm(arm, base, device) for arm in ARMS}
    for arm in arms.values():  # warm-up: first statistics, first refresh, kernels chosen
        for _ in range(2):
            _step(arm, x, y)
    _sync(device)
    for r in range(rounds):
        order = list(ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)])
        for arm_name in order:
            arm = arms[arm_name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                _step(arm, x, y)
            _sync(device)
            arm["times"].append((time.perf_counter() - t0) / steps)
    sgd = statistics.fmean(arms["sgd"]["times"])
    out = {"model": name, "batch": batch, "image": image, "rounds": rounds, "arms": {}}
    for arm_name, arm in arms.items():
        mean = statistics.fmean(arm["times"])
        out["arms"][arm_name] = {"step_s": mean, "ratio_to_sgd": mean / sgd}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run both models and print one table per model; returns the results."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    torch.manual_seed(0)
    results = []
    if args.smoke:
        plan = [("resnet20", create_model("resnet20", num_classes=10), 4, 16, 1, 2, 10)]
    else:
        import torchvision

        plan = [
            ("resnet20", create_model("resnet20", num_classes=10), 128, 32, args.rounds, CYCLE, 10),
            ("resnet50", torchvision.models.resnet50(), 64, 224, args.rounds, CYCLE, 1000),
        ]
    for name, base, batch, image, rounds, steps, classes in plan:
        res = bench(name, base, batch, image, rounds, steps, device, classes)
        results.append(res)
        print(
            f"\n{name}, batch {batch}, {image}x{image}, "
            f"{rounds} rounds of {steps} steps on {device}"
        )
        print("| arm | s/step | ratio to SGD |\n|---|---|---|")
        for arm_name, row in res["arms"].items():
            print(f"| {arm_name} | {row['step_s']:.4f} | {row['ratio_to_sgd']:.3f} |", flush=True)
    out = {"device": str(device), "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
