"""MFNet-3D (Chen et al., ECCV 2018), MFCD-Net's backbone: a multi-fibre 3D CNN on one GOP clip.

The compressed-domain student sees a GOP as one clip (I-frame followed by its accumulated residuals,
optionally with motion-vector channels), so a 3D network replaces CoViAR's three 2D streams at a
tenth of their parameters. Every conv is pre-activated (BN -> ReLU -> Conv3d, no bias) and the 3x3x3
convs are split into 16 fibres (grouped convs), which is where the savings come from.

Module names follow the public MFNet-3D code (``conv1.conv``, ``conv2.B01.conv_i1.bn``, ``tail.bn``,
``classifier``), so its checkpoints map onto :class:`MFNet3D` key for key. Two
departures from the published network keep it usable on a CPU: the final pooling is adaptive (any
clip length and size; at 12x224x224 it equals the published (6,7,7) average pool), and
``width_mult`` narrows every stage for tiny runs (the default 1.0 is the published network).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from brisk.models.pretrained import Layout
from brisk.models.registry import register_model

# (units, mid and output width) of conv2..conv5; the first unit of each stage changes the shape.
_STAGES: tuple[tuple[str, int, int], ...] = (
    ("conv2", 3, 96),
    ("conv3", 4, 192),
    ("conv4", 6, 384),
    ("conv5", 3, 768),
)
# conv2's first unit halves time (the only temporal downsampling); the others halve space.
_FIRST_STRIDE: dict[str, tuple[int, int, int]] = {
    "conv2": (2, 1, 1),
    "conv3": (1, 2, 2),
    "conv4": (1, 2, 2),
    "conv5": (1, 2, 2),
}
FEATURE_LAYERS = ("pool1", "conv2", "conv3", "conv4", "conv5")

# MFNet's RGB normalisation, (x_u8 - mean) * scale, expressed for x in [0, 1].
MFNET_RGB_MEAN = (124.0 / 255, 117.0 / 255, 104.0 / 255)
MFNET_RGB_STD = (1 / (255 * 0.0167),) * 3


class PreActConv3d(nn.Module):
    """BN -> ReLU -> Conv3d: normalising each conv's input leaves residual sums un-normalised."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        padding: tuple[int, int, int] = (0, 0, 0),
        stride: tuple[int, int, int] = (1, 1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W'); no activation after the conv."""
        return self.conv(self.relu(self.bn(x)))


class MultiFiberUnit(nn.Module):
    """One MF unit: a cheap 1x1x1 multiplexer mixes the fibres, then a grouped 3D bottleneck.

    Grouped convs alone would never exchange information between fibres; the multiplexer (squeeze to
    a quarter of ``mid_channels`` and back, added to the input) does so at a small cost.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: tuple[int, int, int],
        first: bool,
        groups: int,
    ) -> None:
        super().__init__()
        squeeze = mid_channels // 4
        self.conv_i1 = PreActConv3d(in_channels, squeeze)
        self.conv_i2 = PreActConv3d(squeeze, in_channels)
        self.conv_m1 = PreActConv3d(in_channels, mid_channels, (3, 3, 3), (1, 1, 1), stride, groups)
        if first:
            self.conv_m2 = PreActConv3d(mid_channels, out_channels)
            # Projection shortcut: the first unit of a stage changes width and resolution.
            self.conv_w1: PreActConv3d | None = PreActConv3d(
                in_channels, out_channels, stride=stride
            )
        else:
            self.conv_m2 = PreActConv3d(
                mid_channels, out_channels, (1, 3, 3), (0, 1, 1), groups=groups
            )
            self.conv_w1 = None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W'): multiplexed bottleneck plus shortcut."""
        multiplexed = x + self.conv_i2(self.conv_i1(x))
        h = self.conv_m2(self.conv_m1(multiplexed))
        shortcut = x if self.conv_w1 is None else self.conv_w1(x)
        return h + shortcut


def _width(channels: int, width_mult: float, groups: int) -> int:
    """Scale a width, rounded to a multiple of ``groups`` (grouped convs need divisible widths)."""
    return max(groups, int(round(channels * width_mult / groups)) * groups)


class MFNet3D(nn.Module):
    """MFNet-3D for clips of shape (B, in_channels, T, H, W); returns (B, num_classes) logits.

    ``feature_channels`` names the stages that :meth:`forward_features` returns (and that feature
    mimicking may hook) with their channel counts.
    """

    #: the tensors a published checkpoint (cypw/PyTorch-MFNet) may not fit: classifier, first conv
    checkpoint_layout = Layout("classifier.", "conv1.conv.weight")

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        num_frames: int = 12,
        width_mult: float = 1.0,
        groups: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or num_frames < 1:
            raise ValueError(
                f"MFNet3D: num_classes, in_channels and num_frames must be positive, got "
                f"{num_classes}, {in_channels}, {num_frames}"
            )
        if width_mult <= 0:
            raise ValueError(f"MFNet3D: width_mult must be > 0, got {width_mult}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        # The clip length of a standard input (12 = one GOP); the network itself accepts any length.
        self.num_frames = num_frames
        stem = _width(16, width_mult, groups)
        self.conv1 = nn.Sequential(
            OrderedDict(
                conv=nn.Conv3d(in_channels, stem, (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False),
                bn=nn.BatchNorm3d(stem),
                relu=nn.ReLU(inplace=True),
            )
        )
        self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.feature_channels: dict[str, int] = {"pool1": stem}
        width_in = stem
        for name, units, width in _STAGES:
            width = _width(width, width_mult, groups)
            blocks = OrderedDict(
                (
                    f"B{i:02d}",
                    MultiFiberUnit(
                        width_in if i == 1 else width,
                        width,
                        width,
                        _FIRST_STRIDE[name] if i == 1 else (1, 1, 1),
                        first=i == 1,
                        groups=groups,
                    ),
                )
                for i in range(1, units + 1)
            )
            self.add_module(name, nn.Sequential(blocks))
            self.feature_channels[name] = width
            width_in = width
        self.tail = nn.Sequential(
            OrderedDict(bn=nn.BatchNorm3d(width_in), relu=nn.ReLU(inplace=True))
        )
        self.globalpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def standard_input_shape(self, size: int = 224) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip as the published network sees it; used for cost reports."""
        return (self.in_channels, self.num_frames, size, size)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage's output (pool1, conv2..conv5), e.g. for feature mimicking or inspection."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MFNet3D expects clips shaped (B, {self.in_channels}, T, H, W), "
                f"got {tuple(x.shape)}"
            )
        features: dict[str, Tensor] = {}
        h = self.maxpool(self.conv1(x))
        features["pool1"] = h
        for name, _, _ in _STAGES:
            h = getattr(self, name)(h)
            features[name] = h
        return features

    def head(self, conv5: Tensor) -> Tensor:
        """conv5 features -> logits (B, num_classes): the final BN-ReLU, global pool, classifier."""
        h = self.globalpool(self.tail(conv5)).flatten(1)
        return self.classifier(self.dropout(h))

    def forward(self, x: Tensor) -> Tensor:
        """Clips (B, C, T, H, W) -> logits (B, num_classes); any T, H, W (adaptive pooling)."""
        return self.head(self.forward_features(x)["conv5"])


class NormalizedInput(nn.Module):
    """Maps [0, 1] RGB clips to what a network was trained on, so callers can feed raw frames.

    The constants are non-persistent buffers: checkpoints keep only the wrapped network's weights
    (under ``net.``) and the constants cannot go stale in a saved file.
    """

    #: checkpoints hold the wrapped network's tensors (``pretrained.weights_module``)
    weights_in = "net"

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        shape = (1, len(mean), 1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(shape), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """RGB clips (B, 3, T, H, W) in [0, 1] -> the wrapped network's output."""
        return self.net((x - self.mean) / self.std)

    def __getattr__(self, name: str):
        # Expose the wrapped network's metadata (feature_channels, standard_input_shape, ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


@register_model
def mfcd_net(
    num_classes: int,
    in_channels: int = 3,
    num_frames: int = 12,
    width_mult: float = 1.0,
    dropout: float = 0.0,
) -> MFNet3D:
    """MFCD-Net: MFNet-3D on the compressed-domain GOP clip (3 channels I+R, or 5 with MVs)."""
    return MFNet3D(num_classes, in_channels, num_frames, width_mult, dropout=dropout)


@register_model
def mfnet_rgb(
    num_classes: int,
    num_frames: int = 12,
    width_mult: float = 1.0,
    dropout: float = 0.0,
) -> NormalizedInput:
    """The raw-domain teacher: MFNet-3D on decoded RGB frames in [0, 1], normalised inside."""
    net = MFNet3D(num_classes, 3, num_frames, width_mult, dropout=dropout)
    return NormalizedInput(net, MFNET_RGB_MEAN, MFNET_RGB_STD)
