"""A small CNN for the embedded digits task: trains to >= 95 % test accuracy in seconds on a CPU."""

from __future__ import annotations

from torch import Tensor, nn

from brisk.models.registry import register_model


class SmallCNN(nn.Module):
    """Two conv stages and a linear head.

    ``batch_norm=False`` swaps BatchNorm for identity (and gives the convolutions a bias): BatchNorm
    normalises with the statistics of each rank's share of the batch, so only a BN-free model trains
    to the same weights under any number of processes.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32, batch_norm: bool = True
    ) -> None:
        super().__init__()

        def norm(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=not batch_norm),
            norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=not batch_norm),
            norm(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, in_channels, H, W) -> logits (B, num_classes); any H, W."""
        return self.fc(self.features(x).flatten(1))


@register_model
def small_cnn(
    num_classes: int = 10, in_channels: int = 1, width: int = 32, batch_norm: bool = True
) -> nn.Module:
    """A tiny CNN for MNIST-size runs; ``batch_norm=False`` trains alike on any number of ranks."""
    return SmallCNN(num_classes, in_channels, width, batch_norm)
