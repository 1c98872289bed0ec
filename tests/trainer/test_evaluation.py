"""Video accuracy comes with its binomial standard error, so a table can say what it resolves."""

from __future__ import annotations

import math

import pytest
import torch

from brisk.trainer.evaluation import EvalAccumulator


def test_video_accuracy_reports_its_standard_error() -> None:
    acc = EvalAccumulator(num_classes=2)
    # 4 videos of 2 clips each; the pooled scores get videos 0, 1, 2 right and video 3 wrong
    logits = torch.tensor([[3.0, 0], [1, 0], [0, 2], [0, 1], [2, 0], [0, 1], [0, 3], [0, 1]])
    target = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0])
    video = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    acc.add(logits, target, video)
    metrics = acc.compute()
    assert metrics["videos"] == 4 and metrics["video_acc1"] == pytest.approx(0.75)
    assert metrics["video_acc1_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))


def test_image_evaluation_has_no_video_figures() -> None:
    acc = EvalAccumulator(num_classes=2)
    acc.add(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert "video_acc1_se" not in acc.compute()
