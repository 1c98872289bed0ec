"""CoViAR (Wu et al., CVPR 2018): the three-stream compressed-domain baseline for MFCD-Net.

Three 2D torchvision ResNets look at single frames: ResNet-152 on the I-frame, ResNet-18 on the
accumulated motion vectors (2-channel stem) and ResNet-18 on the accumulated residual, each
MV/residual stream behind an input BatchNorm. Scores are late-fused as ``2 * I + MV + R``, the
weights of CoViAR's evaluation script.

It reads the same clip layout as the MFCD-Net student, (B, C, T, H, W): frame 0 is the I-frame,
frames 1.. are residuals in channels 0-2 and, when C = 5, motion vectors in channels 3-4. Like
CoViAR's TSN-style training, the MV and residual streams score every P-frame of the clip and average
the logits. One "CoViAR clip" in the cost reports is T = 2 (one I-frame plus one P-frame), the unit
CoViAR samples 25 times per video at test time.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from brisk.models.registry import register_model

# CoViAR's late-fusion weights for the I-frame, motion-vector and residual scores.
FUSION_WEIGHTS = (2.0, 1.0, 1.0)


def _resnet(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net


class FrameStream(nn.Module):
    """A 2D CNN applied to every frame of a (B, C, T, H, W) slice, logits averaged over frames."""

    def __init__(self, net: nn.Module, in_channels: int, input_bn: bool) -> None:
        super().__init__()
        # CoViAR normalises MV and residual inputs with a learnt BatchNorm (its ``data_bn``).
        self.data_bn = nn.BatchNorm2d(in_channels) if input_bn else nn.Identity()
        self.net = net

    def forward(self, frames: Tensor) -> Tensor:
        """(B, C, T, H, W) frames -> (B, num_classes) logits, the mean of the T per-frame logits."""
        b, c, t, h, w = frames.shape
        flat = frames.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        return self.net(self.data_bn(flat)).view(b, t, -1).mean(dim=1)


class CoViAR(nn.Module):
    """Three-stream CoViAR; ``in_channels`` 3 (I + residuals) or 5 (with motion vectors)."""

    def __init__(self, num_classes: int, in_channels: int = 5, num_frames: int = 2) -> None:
        super().__init__()
        if in_channels not in (3, 5):
            raise ValueError(
                f"CoViAR: in_channels must be 3 (I + R) or 5 (I + R + MV), got {in_channels}"
            )
        if num_frames < 2:
            raise ValueError(
                "CoViAR: a clip needs an I-frame and at least one P-frame, "
                f"got num_frames={num_frames}"
            )
        self.num_classes, self.in_channels, self.num_frames = num_classes, in_channels, num_frames
        self.iframe = FrameStream(_resnet("resnet152", num_classes, 3), 3, input_bn=False)
        self.residual = FrameStream(_resnet("resnet18", num_classes, 3), 3, input_bn=True)
        self.mv = (
            FrameStream(_resnet("resnet18", num_classes, 2), 2, input_bn=True)
            if in_channels == 5
            else None
        )

    def standard_input_shape(self, size: int = 224) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one CoViAR clip (an I-frame and one P-frame); used for cost reports."""
        return (self.in_channels, self.num_frames, size, size)

    def forward(self, x: Tensor) -> Tensor:
        """Clips (B, C, T >= 2, H, W) -> fused logits (B, num_classes).

        Frame 0 feeds the I-frame stream; frames 1.. feed the residual (and motion vector) streams.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] < 2:
            raise ValueError(
                f"CoViAR expects clips shaped (B, {self.in_channels}, T>=2, H, W), "
                f"got {tuple(x.shape)}"
            )
        w_i, w_mv, w_r = FUSION_WEIGHTS
        scores = w_i * self.iframe(x[:, :3, :1]) + w_r * self.residual(x[:, :3, 1:])
        if self.mv is not None:
            scores = scores + w_mv * self.mv(x[:, 3:5, 1:])
        return scores


@register_model
def coviar(num_classes: int, in_channels: int = 5, num_frames: int = 2) -> CoViAR:
    """CoViAR's three streams (ResNet-152 I-frame, ResNet-18 MV and residual), late-fused."""
    return CoViAR(num_classes, in_channels, num_frames)
