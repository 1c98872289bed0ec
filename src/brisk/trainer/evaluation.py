"""Clip- and video-level metrics, exact under data parallelism.

Clip metrics are sums reduced across ranks. When batches carry a ``"video"`` index (video data sets
yield one item per GOP clip), softmax scores are also summed per video and the video's prediction is
the argmax of that sum, the protocol of CoViAR and MFCD-Net.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

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
        metrics = {
            "loss": sums[0].item() / n,
            "acc1": sums[1].item() / n,
            "acc5": sums[2].item() / n,
        }
        if self.video_scores or _any_rank_has_videos(bool(self.video_scores)):
            scores, labels = self._gather_videos()
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices
            self.confusion = _confusion(top[:, 0], labels, self.num_classes)
            metrics["video_acc1"] = acc = (top[:, 0] == labels).float().mean().item()
            # binomial standard error of video_acc1: what one evaluation can resolve
            metrics["video_acc1_se"] = math.sqrt(acc * (1 - acc) / max(len(labels), 1))
            metrics["video_acc5"] = (top == labels[:, None]).any(1).float().mean().item()
            metrics["videos"] = float(len(labels))
        else:
            all_reduce_sum(self.confusion)
        return metrics

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
