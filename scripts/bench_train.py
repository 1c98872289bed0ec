"""Training throughput (images/s) and peak memory of the runner's own training step.

Each case runs in a fresh subprocess so peak memory (max RSS on CPU, max allocated on CUDA) belongs
to that case alone. The step is ``brisk.trainer.loop.Trainer``'s, fed from memory so data loading is
not measured. These figures are the baseline the whitening overhead is measured against.

    python scripts/bench_train.py                       # resnet20 @128 CIFAR-size, digits default
    python scripts/bench_train.py --json outputs/bench/train.json --steps 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = {
    "resnet20 b128 32x32": ["task=cifar", "model=resnet20", "trainer.batch_size=128"],
    "small_cnn b64 16x16 (digits default)": ["task=digits"],
}


def measure(overrides: list[str], steps: int, warmup: int, threads: int) -> dict:
    """Runs inside the subprocess."""
    import resource
    import tempfile
    import time

    import torch
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from torch.utils.data import TensorDataset

    import brisk.config  # noqa: F401
    from brisk.data.base import DataModule
    from brisk.run.context import RunContext
    from brisk.run.run_dir import RunPaths
    from brisk.trainer.loop import Trainer, _Session, _Window

    torch.set_num_threads(threads)
    with initialize_config_module("brisk.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    shape = (
        (3, 32, 32)
        if cfg.task.name == "cifar"
        else (1, cfg.dataset.image_size, cfg.dataset.image_size)
    )
    batch = cfg.trainer.batch_size

    class InMemory(DataModule):
        num_classes = 10

        def __init__(self) -> None:
            self.data = TensorDataset(
                torch.randn(batch * 4, *shape), torch.randint(0, 10, (batch * 4,))
            )

        def train_dataset(self):
            return self.data

        val_dataset = test_dataset = train_dataset

    model = instantiate(cfg.model, num_classes=10)
    ctx = RunContext(InMemory(), RunPaths(Path(tempfile.mkdtemp())))
    trainer = Trainer(
        ctx,
        model,
        cfg.trainer,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler),
        instantiate(cfg.whitening),
        instantiate(cfg.teacher),
    )
    trainer._window, trainer._session = _Window(trainer.device), _Session()
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer._train_step({"input": x, "target": y})
        trainer.step += 1
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {
        "step_ms_median": 1000 * median,
        "step_ms_mean": 1000 * sum(times) / len(times),
        "images_per_s": batch / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
        "batch": batch,
        "input": list(shape),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/train.json"))
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides applied to every case (e.g. whitening=evd)",
    )
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.steps, args.warmup, args.threads)))
        return
    results = {}
    for name, overrides in CASES.items():
        cmd = [
            sys.executable,
            __file__,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--child",
            *overrides,
            *args.overrides,
        ]
        out = (
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        results[name] = json.loads(out)
    print(f"{'case':40s} {'step ms':>9s} {'images/s':>10s} {'peak RSS MiB':>13s}")
    for name, r in results.items():
        print(
            f"{name:40s} {r['step_ms_median']:9.1f} {r['images_per_s']:10.0f} "
            f"{r['peak_rss_mib']:13.0f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"overrides": args.overrides, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
