"""Checkpoint bytes a run writes: ``python scripts/measure_checkpoint_bytes.py OVERRIDES...``.

Runs ``train`` in-process in a fresh directory and counts every byte ``torch.save`` writes into the
run's checkpoint files, the number of saves, and the disk space the checkpoints folder holds at the
end (a file with two names, ``best.pt`` linked to ``last.pt``, counted once). The figures in
docs/runs.md come from a whitened ResNet-20 on a small CIFAR-shaped set (``write_fake_cifar`` of
tests/conftest.py, 40 images per class, into DATA):

    python scripts/measure_checkpoint_bytes.py task=cifar paths.data_dir=DATA \\
        dataset.val_size=50 whitening=recursive debug=fast trainer.epochs=3 \\
        trainer.batch_size=32 trainer.threads=1
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch


def main(overrides: list[str]) -> None:
    """Run one training and print what its checkpoints cost in bytes written and on disk."""
    from hydra import compose, initialize_config_module

    from brisk.config import CONFIG_NAME
    from brisk.train import train

    saves: list[int] = []
    real_save = torch.save

    def counting_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        start = f.tell() if hasattr(f, "tell") else 0
        real_save(obj, f, *args, **kwargs)
        if hasattr(f, "tell") and isinstance(obj, dict) and "optimizer" in obj:
            saves.append(f.tell() - start)

    torch.save = counting_save  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        with initialize_config_module(config_module="brisk.conf", version_base="1.3"):
            cfg = compose(
                config_name=CONFIG_NAME, overrides=[f"paths.output_dir={tmp}", *overrides]
            )
        train(cfg, run)
        files = sorted((run / "checkpoints").glob("*.pt"))
        inodes = {f.stat().st_ino: f.stat().st_blocks * 512 for f in files}
        print(f"overrides: {' '.join(overrides)}")
        print(f"checkpoint saves: {len(saves)}, bytes written: {sum(saves):,}")
        for f in files:
            print(f"  {f.name}: {f.stat().st_size:,} bytes, {f.stat().st_nlink} name(s)")
        print(f"checkpoints folder on disk: {sum(inodes.values()):,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
