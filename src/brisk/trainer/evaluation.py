"""Clip- and video-level metrics, exact under data parallelism.

Clip metrics are sums reduced across ranks. When batches carry a ``"video"`` index (video data sets
yield one item per GOP clip), softmax scores are also summed per video and the video's prediction is
the argmax of that sum, the protocol of CoViAR and MFCD-Net.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from brisk.run.checkpoint import atomic_write
from brisk.run.distributed import all_reduce_sum
from brisk.runtime import is_distributed


class EvalAccumulator:
    """Sums of one evaluation pass on this rank; :meth:`compute` reduces them across ranks."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss_sum, self.count = 0.0, 0
        self.top1: int | float = 0  # Tensor.item() is typed int | float
        self.top5: int | float = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.video_scores: dict[int, Tensor] = {}
        self.video_labels: dict[int, int] = {}

    def add(self, logits: Tensor, target: Tensor, video: Tensor | None = None) -> None:
        """Count one batch: loss, top-1/top-5 hits and the confusion matrix, and the softmax scores
        of each clip's ``video`` when given.
        """
        logits, target = logits.detach().cpu(), target.detach().cpu()
        self.loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        self.top1 += (topk[:, 0] == target).sum().item()
        self.top5 += (topk == target[:, None]).any(1).sum().item()
        self.count += len(target)
        if video is None:
            self.confusion += _confusion(topk[:, 0], target, self.num_classes)
            return
        probs = logits.softmax(1)
        for v, p, y in zip(video.cpu().tolist(), probs, target.tolist()):
            self.video_scores[v] = self.video_scores.get(v, 0) + p
            self.video_labels[v] = y

    def compute(self) -> dict[str, float]:
        """The metrics over every rank's samples; every rank must call it (it all-reduces)."""
        sums = all_reduce_sum(
            torch.tensor([self.loss_sum, self.top1, self.top5, self.count], dtype=torch.float64)
        )
        n = max(sums[3].item(), 1)
        # top-5 of 5 classes or fewer is every class: a constant 1.0, so it is not reported
        top5 = self.num_classes > 5
        metrics = {"loss": sums[0].item() / n, "acc1": sums[1].item() / n}
        if top5:
            metrics["acc5"] = sums[2].item() / n
        if self.video_scores or _any_rank_has_videos(bool(self.video_scores)):
            scores, labels = self._gather_videos()
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices
            self.confusion = _confusion(top[:, 0], labels, self.num_classes)
            metrics["video_acc1"] = acc = (top[:, 0] == labels).float().mean().item()
            # binomial standard error of video_acc1: what one evaluation can resolve
            metrics["video_acc1_se"] = math.sqrt(acc * (1 - acc) / max(len(labels), 1))
            if top5:
                metrics["video_acc5"] = (top == labels[:, None]).any(1).float().mean().item()
            metrics["video_mean_class_acc1"] = mean_class_accuracy(self.confusion)
            metrics["videos"] = float(len(labels))
        else:
            all_reduce_sum(self.confusion)
            metrics["mean_class_acc1"] = mean_class_accuracy(self.confusion)
        return metrics

    def per_class(self, names: list[str] | None = None) -> list[dict[str, object]]:
        """One row per class of the confusion matrix (videos when pooled, else samples): its
        count, hits, accuracy and the class it is most often mistaken for. Call after
        :meth:`compute`."""
        cm = self.confusion
        rows = []
        for c in range(self.num_classes):
            count, hits = int(cm[c].sum()), int(cm[c, c])
            wrong = cm[c].clone()
            wrong[c] = 0
            other = int(wrong.argmax())
            rows.append(
                {
                    "class": c,
                    "name": names[c] if names else str(c),
                    "count": count,
                    "correct": hits,
                    "accuracy": hits / count if count else float("nan"),
                    "most_confused_with": (names[other] if names else str(other))
                    if int(wrong[other])
                    else "",
                    "confused_count": int(wrong[other]),
                }
            )
        return rows

    def write_class_results(self, folder: Path, split: str, names: list[str] | None) -> None:
        """``<split>_per_class.csv`` and ``<split>_confusion.csv`` (rows: true class, columns:
        predicted, counts), what MMAction2 and CoViAR users look at besides the mean."""
        rows = self.per_class(names)
        labels = [str(r["name"]) for r in rows]
        per_class = io.StringIO(newline="")
        writer = csv.DictWriter(per_class, list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "accuracy": f"{r['accuracy']:.6g}"} for r in rows)
        confusion = io.StringIO(newline="")
        table = csv.writer(confusion)
        table.writerow(["true \\ predicted", *labels])
        for label, counts in zip(labels, self.confusion.tolist()):
            table.writerow([label, *counts])
        for name, text in (("per_class", per_class), ("confusion", confusion)):
            atomic_write(folder / f"{split}_{name}.csv", _writer(text.getvalue().encode()))

    def _gather_videos(self) -> tuple[Tensor, Tensor]:
        local = {v: (s, self.video_labels[v]) for v, s in self.video_scores.items()}
        if is_distributed():
            parts: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(parts, local)
            merged: dict[int, tuple[Tensor, int]] = {}
            for part in parts:  # clips of one video may be spread over ranks
                for v, (s, y) in part.items():
                    merged[v] = (merged[v][0] + s, y) if v in merged else (s, y)
            local = merged
        keys = sorted(local)
        return torch.stack([local[v][0] for v in keys]), torch.tensor([local[v][1] for v in keys])

    def confusion_figure(self):
        """The confusion matrix as a figure for TensorBoard, rendered off-screen (Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cm = self.confusion.float()
        cm = cm / cm.sum(1, keepdim=True).clamp_min(1)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion (row-normalised)")
        fig.tight_layout()
        return fig


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda f: f.write(data)


def mean_class_accuracy(confusion: Tensor) -> float:
    """The mean over classes of each class's accuracy (classes with no sample left out): on an
    unbalanced test set it weighs every class alike, where acc1 weighs every sample alike."""
    counts = confusion.sum(1)
    seen = counts > 0
    if not bool(seen.any()):
        return float("nan")
    return (confusion.diagonal()[seen].double() / counts[seen]).mean().item()


def _confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _any_rank_has_videos(local: bool) -> bool:
    if not is_distributed():
        return local
    flag = torch.tensor([int(local)])
    all_reduce_sum(flag)
    return bool(flag.item())


def monitored(metrics: dict[str, float], monitor: str) -> float:
    """The metric that ranks checkpoints (``task.monitor``); acc1 where a split lacks it."""
    return metrics.get(monitor, metrics["acc1"])


def format_metrics(metrics: dict[str, float]) -> str:
    """``loss 0.1234  acc1 0.9800 ...``: how every metrics line of the log reads."""
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
