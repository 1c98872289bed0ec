"""Inception-v1 I3D (Carreira & Zisserman, 2017), laid out so public pytorch-i3d weights load.

The RGB teacher of the video task. What must match the public files (``rgb_imagenet.pt``,
``rgb_charades.pt``) is the module tree: end points named ``Conv3d_1a_7x7`` ... ``Mixed_5c`` and
``logits``, each conv unit holding ``conv3d`` and ``bn``, Inception branches ``b0, b1a, b1b, b2a,
b2b, b3b``. Matching also needs TensorFlow's "SAME" padding, computed from the input size at every
call (the weights were trained with it; a fixed symmetric padding shifts every feature map by one
pixel on even sizes), and BatchNorm with eps 1e-3.

Inputs are RGB clips scaled to [-1, 1], shaped (B, 3, T, H, W). The head averages the per-time
logits. Its (2, 7, 7) average pool shrinks to the feature map when the clip is smaller than 9 x 193
x 193, so CPU tests can run tiny clips; at the standard 224 px the output equals the public
network's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brisk.models.pretrained import Layout
from brisk.models.registry import register_model

__all__ = ["InceptionI3d", "same_padding"]

_Triple = tuple[int, int, int]

# Output widths of the six branch convs (b0, b1a, b1b, b2a, b2b, b3b) of each Inception module.
INCEPTION_WIDTHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension as (front, back); the smaller half in front."""
    # A dimension the stride divides needs kernel - stride; otherwise the remainder decides.
    overhang = stride if size % stride == 0 else size % stride
    total = max(kernel - overhang, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: _Triple, stride: _Triple) -> Tensor:
    pads: list[int] = []
    # F.pad wants the last dimension first: (W_front, W_back, H_front, H_back, T_front, T_back).
    for dim in (4, 3, 2):
        pads.extend(same_padding(x.shape[dim], kernel[dim - 2], stride[dim - 2]))
    return F.pad(x, pads) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, BatchNorm (eps 1e-3), ReLU; the classifier unit has neither."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: _Triple = (1, 1, 1),
        stride: _Triple = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max pool with "SAME" zero padding (zeros are harmless: the inputs come out of a ReLU)."""

    def __init__(self, kernel: _Triple, stride: _Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3x3; 1x1->3x3x3; max pool->1x1), channel-concatenated."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class InceptionI3d(nn.Module):
    """I3D for (B, 3, T, H, W) clips in [-1, 1]; returns (B, num_classes) time-averaged logits.

    ``width_mult`` < 1 narrows every conv for tiny CPU runs (such a model no longer takes the public
    weights). ``feature_channels`` lists the end points that feature mimicking may hook.
    """

    #: the tensors a published checkpoint (pytorch-i3d) may not fit: the classifier, the first conv
    checkpoint_layout = Layout("logits.", "Conv3d_1a_7x7.conv3d.weight")

    def __init__(
        self,
        num_classes: int = 400,
        in_channels: int = 3,
        num_frames: int = 64,
        width_mult: float = 1.0,
        dropout: float = 0.5,
        keep_time: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1 or width_mult <= 0:
            raise ValueError(
                "InceptionI3d: need num_classes >= 1 and width_mult > 0, "
                f"got {num_classes}, {width_mult}"
            )
        self.num_classes, self.in_channels, self.num_frames = num_classes, in_channels, num_frames

        def w(c: int) -> int:
            return max(1, int(round(c * width_mult)))

        # keep_time: no temporal stride anywhere. The published network halves time three times
        # (conv1, pool4a, pool5a), which leaves 2 of a 12-frame GOP's steps at Mixed_5c; the weights
        # do not depend on the strides, so the public files load either way.
        self.keep_time = keep_time
        t = 1 if keep_time else 2
        self.feature_channels: dict[str, int] = {}
        self.Conv3d_1a_7x7 = Unit3D(in_channels, w(64), (7, 7, 7), (t, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64))
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        channels = w(192)
        self.feature_channels["Conv3d_2c_3x3"] = channels
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", 3, 2), "Mixed_5b": ("MaxPool3d_5a_2x2", 2, 2)}
        for name, widths in INCEPTION_WIDTHS.items():
            if name in pools:
                pool_name, k, s = pools[name]
                self.add_module(pool_name, MaxPoolSame((k, k, k), (min(s, t), s, s)))
            module = InceptionModule(channels, tuple(w(c) for c in widths))  # type: ignore[arg-type]
            self.add_module(name, module)
            channels = module.out_channels
            self.feature_channels[name] = channels
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)
        # End points in the order the forward pass visits them.
        self.end_points = [n for n, _ in self.named_children() if n not in ("dropout", "logits")]

    def standard_input_shape(self, size: int = 224) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip as the published network sees it; used for cost reports."""
        return (self.in_channels, self.num_frames, size, size)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last Inception block's output (B, C, T', H', W'), before pooling and classifier."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"InceptionI3d expects clips shaped (B, {self.in_channels}, T, H, W), "
                f"got {tuple(x.shape)}"
            )
        for name in self.end_points:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """RGB clips (B, 3, T, H, W) in [-1, 1] -> logits (B, num_classes), averaged over time."""
        h = self.forward_features(x)
        kernel = tuple(min(k, s) for k, s in zip((2, 7, 7), h.shape[2:]))
        h = F.avg_pool3d(h, kernel, stride=1)
        return self.logits(self.dropout(h)).mean(dim=(2, 3, 4))


@register_model
def i3d(
    num_classes: int,
    in_channels: int = 3,
    num_frames: int = 64,
    width_mult: float = 1.0,
    dropout: float = 0.5,
    keep_time: bool = False,
) -> InceptionI3d:
    """Inception-v1 I3D; inputs in [-1, 1]. ``num_frames`` only sets the cost reports' clip."""
    return InceptionI3d(num_classes, in_channels, num_frames, width_mult, dropout, keep_time)
