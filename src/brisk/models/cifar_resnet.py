"""CIFAR-style ResNets of He et al. (2016), sec. 4.2: stages of 16/32/64 channels, 6n+2 layers.

Shortcuts that change shape use a strided 1x1 convolution with batch norm (option B), so every layer
the whitening modules see is an ordinary Conv2d or Linear.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brisk.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm around an identity shortcut (a 1x1 projection on a change)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, H, W) -> (B, planes, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes); any H, W (global average pooling)."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20 (0.27 M parameters at width 16), the paper's smallest CIFAR network."""
    return CifarResNet(20, num_classes, in_channels)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-32 of He et al.'s CIFAR-10 table (n = 5)."""
    return CifarResNet(32, num_classes, in_channels)


@register_model
def resnet44(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-44 of He et al.'s CIFAR-10 table (n = 7)."""
    return CifarResNet(44, num_classes, in_channels)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-56 of He et al.'s CIFAR-10 table (n = 9)."""
    return CifarResNet(56, num_classes, in_channels)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-110 of He et al.'s CIFAR-10 table (n = 18), the deepest they report."""
    return CifarResNet(110, num_classes, in_channels)
