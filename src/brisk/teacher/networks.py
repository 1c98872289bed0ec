"""The teacher networks: the RGB model a ``teacher=`` option builds, behind its input transform."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brisk.models.i3d import InceptionI3d
from brisk.models.mfnet3d import MFNET_RGB_MEAN, MFNET_RGB_STD, MFNet3D, NormalizedInput
from brisk.teacher.distill import DistillationTeacher
from brisk.teacher.settings import RGBI3DSettings, RGBMFNetSettings, TeacherSettings


class DifferenceInput(NormalizedInput):
    """The normalised first frame, then the scaled differences of consecutive frames.

    ``[n_0, k (x_1 - x_0), ..., k (x_{T-1} - x_{T-2})]``, with ``n_0`` the first frame normalised as
    the network expects and ``x`` the [0, 1] frames: a fixed, invertible re-basing of the same RGB
    clip. A network trained from scratch on RGB fits the appearance of a small set; the
    differences put the motion (a few pixels per frame over textures) at the scale of appearance
    (docs/video.md).
    No parameters are added, so checkpoints keep the layout of :class:`NormalizedInput`.
    """

    def __init__(
        self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], scale: float
    ) -> None:
        super().__init__(net, mean, std)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        """RGB clips (B, 3, T, H, W) in [0, 1] -> the network's output on the re-based clip."""
        first = (x[:, :, :1] - self.mean) / self.std
        diffs = self.scale * (x[:, :, 1:] - x[:, :, :-1])
        return self.net(torch.cat([first, diffs], dim=2))


def wrap_input(
    net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], config: TeacherSettings
) -> NormalizedInput:
    """``net`` behind its input transform (``teacher.input_transform``), with the BatchNorm
    momentum of ``teacher.bn_momentum`` (None keeps the network's own)."""
    if config.bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    if config.input_transform == "diff":
        return DifferenceInput(net, mean, std, config.diff_scale)
    return NormalizedInput(net, mean, std)


class RGBI3DTeacher(DistillationTeacher):
    """Inception-v1 I3D on RGB (``teacher=rgb_i3d``).

    Public pytorch-i3d files load via ``checkpoint``.
    """

    name = "rgb_i3d"
    settings_class = RGBI3DSettings

    def build_model(self, num_classes: int) -> nn.Module:
        """I3D behind a [-1, 1] input scaling, the range its public weights were trained on."""
        c = self.config
        net = InceptionI3d(num_classes, 3, c.num_frames, c.width_mult, c.dropout, c.keep_time)
        # I3D was trained on RGB scaled to [-1, 1]: (x - 0.5) / 0.5.
        return wrap_input(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), c)


class RGBMFNetTeacher(DistillationTeacher):
    """MFNet-3D on RGB (``teacher=rgb_mfnet``).

    It is the student's own architecture, so features align 1:1.
    """

    name = "rgb_mfnet"
    settings_class = RGBMFNetSettings

    def build_model(self, num_classes: int) -> nn.Module:
        """The student's RGB MFNet behind MFNet's RGB normalisation."""
        c = self.config
        net = MFNet3D(num_classes, 3, c.num_frames, c.width_mult, dropout=c.dropout)
        return wrap_input(net, MFNET_RGB_MEAN, MFNET_RGB_STD, c)
