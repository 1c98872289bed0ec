"""ImageNet ResNets from torchvision, registered so configs can name them like any other model."""

from __future__ import annotations

import torchvision
from torch import nn

from brisk.models.registry import register_model


@register_model
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised; ``in_channels`` != 3 gets a new stem."""
    return _torchvision_resnet("resnet18", num_classes, in_channels)


@register_model
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-50, randomly initialised; ``in_channels`` != 3 gets a new stem."""
    return _torchvision_resnet("resnet50", num_classes, in_channels)


def _torchvision_resnet(name: str, num_classes: int, in_channels: int) -> nn.Module:
    # weights=None: nothing is ever downloaded; users load their own checkpoints via ckpt_path.
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model
