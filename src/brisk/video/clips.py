"""Turning cached GOP arrays into training/test tensors: crop, flip, resize and normalisation.

One spatial transform is drawn per clip and applied to all 12 frames, to the motion channels and to
the teacher's RGB frames alike. A horizontal flip mirrors the pixels and negates the x motion
component; resizing a crop scales the motion vectors by the same factor.

Normalisation (``normalization=``):

- ``mfnet`` (default, as MFCD-Net's code): the I-frame and the quantised residuals ``clip(R + 128)`` are
  both treated as RGB images, ``(u8 - [124, 117, 104]) * 0.0167``. A zero residual maps to about
  (0.07, 0.18, 0.40), not 0.
- ``centered``: the I-frame as above, residuals ``(u8 - 128) * 0.0167`` so a zero residual is exactly 0.

Motion channels (``mv_channels=true``): ``u8 = clip(mv * 127.5 / 20 + 128, 0, 255)`` then ``u8 / 255 - 0.5``
(CoViAR's quantisation; +-20 px spans the range). The I-frame slot of the motion channels is zero motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from brisk.video.cache import ClipArrays

MFNET_MEAN = (124.0, 117.0, 104.0)
MFNET_SCALE = 0.0167
NORMALIZATIONS = ("mfnet", "centered")
DEFAULT_SCALES = (1.0, 0.875, 0.75, 0.66)


@dataclass(frozen=True)
class CropBox:
    """A crop ``[y, y + h) x [x, x + w)`` of the cached frame, resized to ``out`` x ``out``, maybe flipped."""

    y: int
    x: int
    h: int
    w: int
    out: int
    flip: bool = False


def random_crop(
    height: int,
    width: int,
    out: int,
    scales=DEFAULT_SCALES,
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> CropBox:
    """Scale-jitter crop: each side is ``short side * scale`` (scales at most one step apart, so the
    aspect ratio stays moderate), at a random position, plus a coin flip when ``flip``."""
    short = min(height, width)
    scales = list(scales)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    i = pick(len(scales))
    j = min(max(i + pick(3) - 1, 0), len(scales) - 1)
    h = max(1, min(height, round(short * scales[i])))
    w = max(1, min(width, round(short * scales[j])))
    y = pick(height - h + 1)
    x = pick(width - w + 1)
    return CropBox(y, x, h, w, out, flip=bool(pick(2)) if flip else False)


def centre_crop(height: int, width: int, out: int) -> CropBox:
    """An ``out`` x ``out`` centre crop; frames smaller than that give the largest centred square."""
    side = min(out, height, width)
    return CropBox((height - side) // 2, (width - side) // 2, side, side, out, flip=False)


EVAL_CROPS = (1, 3, 10)


def eval_crop_boxes(height: int, width: int, out: int, crops: int) -> list[CropBox]:
    """The test-time views of a frame, the protocols papers report:

    - 1: the ``out`` x ``out`` centre crop;
    - 3: three squares of the short side at the left, centre and right (top, centre, bottom for a
      portrait frame), each resized to ``out``: the short-side-resize protocol of Non-local/SlowFast;
    - 10: ``out`` x ``out`` crops at the 4 corners and the centre, and their mirror images (TSN and
      CoViAR's oversampling).
    """
    if crops == 1:
        return [centre_crop(height, width, out)]
    if crops == 3:
        side = min(height, width)
        if width >= height:
            return [CropBox(0, x, side, side, out) for x in (0, (width - side) // 2, width - side)]
        return [CropBox(y, 0, side, side, out) for y in (0, (height - side) // 2, height - side)]
    if crops == 10:
        side = min(out, height, width)
        corners = [(0, 0), (0, width - side), (height - side, 0), (height - side, width - side)]
        five = [CropBox(y, x, side, side, out) for y, x in corners]
        five.append(centre_crop(height, width, out))
        return five + [CropBox(b.y, b.x, b.h, b.w, b.out, flip=True) for b in five]
    raise ValueError(f"crops={crops}: expected one of {EVAL_CROPS}")


def squash_box(box: CropBox, height: int, width: int) -> CropBox:
    """Map a box drawn on the frame squashed to ``short x short`` back onto the ``height x width``
    frame: cropping that (non-square) box and resizing it to ``out`` is the same as squashing the frame
    first, the MFCD-Net authors' preprocessing, without resampling the whole frame."""
    short = min(height, width)
    fy, fx = height / short, width / short
    y, x = round(box.y * fy), round(box.x * fx)
    h = max(1, min(height - y, round(box.h * fy)))
    w = max(1, min(width - x, round(box.w * fx)))
    return CropBox(y, x, h, w, box.out, box.flip)


def _resize(x: torch.Tensor, out: int) -> torch.Tensor:
    """(C, T, h, w) -> (C, T, out, out), bilinear, frames as a batch."""
    if x.shape[-2:] == (out, out):
        return x
    c, t = x.shape[:2]
    y = F.interpolate(
        x.reshape(c * t, 1, *x.shape[-2:]), size=(out, out), mode="bilinear", align_corners=False
    )
    return y.reshape(c, t, out, out)


def _crop(a: np.ndarray, box: CropBox) -> np.ndarray:
    """Crop (and mirror) ``(T, H, W, C)`` arrays as a view."""
    a = a[:, box.y : box.y + box.h, box.x : box.x + box.w]
    return a[:, :, ::-1] if box.flip else a


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """``(T, h, w, C)`` -> float32 ``(C, T, h, w)``."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(3, 0, 1, 2).float()


def normalise_rgb(x: torch.Tensor) -> torch.Tensor:
    """MFNet normalisation of a ``(3, ...)`` tensor of 0..255 values."""
    mean = torch.tensor(MFNET_MEAN).view(3, *([1] * (x.dim() - 1)))
    return (x - mean) * MFNET_SCALE


def quantise_motion(mv: torch.Tensor) -> torch.Tensor:
    """CoViAR's motion quantisation, returned already normalised to about [-0.5, 0.5]."""
    u8 = torch.clamp(torch.floor(mv * (127.5 / 20.0) + 128.0), 0, 255)
    return u8 / 255.0 - 0.5


def make_clip(
    arrays: ClipArrays, box: CropBox, normalization: str = "mfnet"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build ``(input (C, T, out, out), rgb (3, T, out, out) in [0, 1])`` from one GOP's arrays."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}: expected one of {NORMALIZATIONS}")
    rgb = _to_tensor(_crop(arrays.rgb, box))  # (3, T, h, w), 0..255
    res = _to_tensor(_crop(arrays.residual, box))  # (3, T-1, h, w), 0..255
    iframe = normalise_rgb(rgb[:, :1])
    res = (res - 128.0) * MFNET_SCALE if normalization == "centered" else normalise_rgb(res)
    channels = [torch.cat([iframe, res], dim=1)]
    if arrays.motion is not None:
        mv = _to_tensor(_crop(arrays.motion, box))  # (2, T-1, h, w), pixels
        if box.flip:
            mv[0].neg_()
        mv[0] *= box.out / box.w
        mv[1] *= box.out / box.h
        mv = torch.cat([torch.zeros_like(mv[:, :1]), mv], dim=1)
        channels.append(quantise_motion(_resize(mv, box.out)))
    clip = torch.cat([_resize(channels[0], box.out), *channels[1:]], dim=0)
    return clip.contiguous(), (_resize(rgb, box.out) / 255.0).clamp_(0, 1).contiguous()
