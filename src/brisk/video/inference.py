"""Using a trained video model: ``classify-video`` (one file, top-5) and ``export-video-model``.

``classify-video VIDEO CKPT`` reads any video the way the run's test split was read: re-encoded to
the run's resolution and GOP size (in a temporary folder), decoded in the compressed domain (the
I-frame and accumulated residuals of each GOP), cropped and normalised by the run's test protocol
(``dataset.test_clips`` x ``dataset.test_crops``); the video's score is the mean softmax over its
clips, as in evaluation. It prints the top-5 classes with their probabilities, as MMAction2's
demo does.

``export-video-model CKPT OUT.onnx|OUT.pt`` writes the trained network as ONNX or traced TorchScript
(:mod:`brisk.models.export`) for one clip of the run's shape, runs the file and checks that it
gives the eager network's logits.

Both read everything from the checkpoint (its resolved config) and the run's ``status.json`` (the
class names): no Hydra, no data set on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate
from torch import Tensor, nn

from brisk.errors import USER_ERROR_EXIT, UserError
from brisk.models.export import export_model, run_exported
from brisk.run.checkpoint import load_checkpoint
from brisk.video.cache import CacheSettings, ClipStore, VideoCache, keyframes_of
from brisk.video.clips import normalise_clip
from brisk.video.datamodule import EvalClips, PreparedVideo


@dataclass
class TrainedVideoModel:
    """A network with its trained weights, the data set settings it was trained on, its labels."""

    model: nn.Module
    dataset: dict[str, Any]
    classes: list[str]
    checkpoint: Path

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one input clip: what the network was trained and tested on."""
        ds = self.dataset
        side = int(ds["crop_size"])
        return (5 if ds.get("mv_channels") else 3, int(ds["gop_size"]), side, side)


def _classes(checkpoint: Path, state: dict[str, Any]) -> list[str]:
    """The run's class names (status.json, beside ``checkpoints/``), or numbers from the
    classifier's size for a checkpoint that travelled alone."""
    status = checkpoint.parent.parent / "status.json"
    try:
        names = json.loads(status.read_text()).get("classes")
    except (OSError, ValueError, AttributeError):
        names = None
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    biases = [v for k, v in state["model"].items() if k.endswith("bias") and v.dim() == 1]
    return [str(i) for i in range(len(biases[-1]))]


def load_trained(checkpoint: str | Path) -> TrainedVideoModel:
    """A brisk video run's ``best.pt``/``last.pt`` as a ready network (eval mode, CPU)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no such checkpoint (a run's checkpoints/best.pt)")
    try:
        state = load_checkpoint(checkpoint)
        config = yaml.safe_load(state["config_yaml"])
    except (RuntimeError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise UserError(
            f"{checkpoint}: not a brisk run's checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    dataset = config.get("dataset") or {}
    if "gop_size" not in dataset:
        raise UserError(f"{checkpoint}: a run of task {config['task']['name']}, not a video task")
    classes = _classes(checkpoint, state)
    model_cfg = {**config["model"], "checkpoint": None}
    model: nn.Module = instantiate(model_cfg, num_classes=len(classes))
    model.load_state_dict(state["model"])
    return TrainedVideoModel(model.eval(), dataset, classes, checkpoint)


def video_clips(trained: TrainedVideoModel, video: str | Path, workdir: Path) -> Tensor:
    """The clips of ``video`` under the run's test protocol, normalised: (N, C, T, H, W)."""
    ds = trained.dataset
    settings = CacheSettings(
        size=(int(ds["resolution"][0]), int(ds["resolution"][1])),
        gop_size=int(ds["gop_size"]),
        qscale=int(ds.get("qscale", 1)),
        motion_vectors=bool(ds.get("mv_channels")),
        clips=False,  # one video: decode its GOPs straight from the re-encoded file
        mv_border=str(ds.get("mv_border", "skip")),
    )
    cache = VideoCache(workdir, settings)
    video = Path(video)
    if not video.is_file():
        raise UserError(f"{video}: no such video file")
    record, _ = cache.prepare_one(video.resolve(), "video" + video.suffix.lower())
    if record["status"] != "ok":
        raise UserError(f"{video}: could not be read as a video ({record['reason']})")
    prepared = PreparedVideo(record["rel"], 0, tuple(record["gop_frames"]), keyframes_of(record))
    test_clips = ds.get("test_clips", "all")
    clips = EvalClips(
        [prepared],
        ClipStore(cache),
        int(ds["crop_size"]),
        str(ds.get("normalization", "mfnet")),
        gop_size=settings.gop_size,
        clips=None if str(test_clips) == "all" else int(test_clips),
        crops=int(ds.get("test_crops", 1)),
        resize=str(ds.get("resize", "keep_aspect")),
        with_rgb=False,
    )
    batch = torch.stack([clips[i]["input"] for i in range(len(clips))])
    return normalise_clip(batch, str(ds.get("normalization", "mfnet")))


@torch.no_grad()
def classify(trained: TrainedVideoModel, video: str | Path) -> Tensor:
    """Class probabilities of ``video``: the mean softmax over its test-protocol clips."""
    with tempfile.TemporaryDirectory(prefix="brisk-classify-") as workdir:
        clips = video_clips(trained, video, Path(workdir))
    return trained.model(clips).softmax(1).mean(0)


def top_classes(probs: Tensor, classes: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable classes, best first."""
    values, indices = probs.topk(min(k, len(classes)))
    return [(classes[int(i)], float(v)) for v, i in zip(values, indices)]


def _run(action, argv: list[str] | None) -> None:
    try:
        action(argv)
    except UserError as err:
        print(f"brisk: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None


def _classify(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="classify-video",
        description="The top classes of one video, by a brisk video run's checkpoint.",
    )
    parser.add_argument("video", help="any video file PyAV decodes")
    parser.add_argument("checkpoint", help="a video run's checkpoints/best.pt")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (5)")
    args = parser.parse_args(argv)
    trained = load_trained(args.checkpoint)
    probs = classify(trained, args.video)
    print(f"{args.video}: top-{min(args.top, len(trained.classes))} of {len(probs)} classes")
    for rank, (name, p) in enumerate(top_classes(probs, trained.classes, args.top), 1):
        print(f"{rank}. {name}: {p:.4f}")


def _export(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="export-video-model",
        description="Export a brisk video run's network to ONNX (.onnx) or TorchScript (.pt).",
    )
    parser.add_argument("checkpoint", help="a video run's checkpoints/best.pt")
    parser.add_argument("output", help="OUT.onnx or OUT.pt (traced TorchScript)")
    parser.add_argument("--batch", type=int, default=1, help="example batch size for the trace")
    args = parser.parse_args(argv)
    trained = load_trained(args.checkpoint)
    example = torch.randn(args.batch, *trained.clip_shape)
    path = export_model(trained.model, example, args.output)
    with torch.no_grad():
        eager = trained.model(example)
    diff = (run_exported(path, example) - eager).abs().max().item()
    print(
        f"{path}: clips {tuple(example.shape[1:])} (C, T, H, W) -> {len(trained.classes)} logits; "
        f"largest difference from the eager network {diff:.2e}"
    )


def classify_main(argv: list[str] | None = None) -> None:
    """Console entry point (``classify-video VIDEO CKPT``)."""
    _run(_classify, argv)


def export_main(argv: list[str] | None = None) -> None:
    """Console entry point (``export-video-model CKPT OUT``)."""
    _run(_export, argv)


if __name__ == "__main__":
    {"classify": classify_main, "export": export_main}[sys.argv[1]](sys.argv[2:])
