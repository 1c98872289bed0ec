"""Turning cached GOP arrays into training/test tensors: crop, flip, resize and normalisation.

One spatial transform is drawn per clip and applied to all 12 frames, to the motion channels and to
the teacher's RGB frames alike. A horizontal flip mirrors the pixels and negates the x motion
component; resizing a crop scales the motion vectors by the same factor.

Normalisation (``normalization=``):

- ``mfnet`` (default, as MFCD-Net's code): the I-frame and the quantised residuals ``clip(R + 128)``
  are both treated as RGB images, ``(u8 - [124, 117, 104]) * 0.0167``. A zero residual maps to about
  (0.07, 0.18, 0.40), not 0.
- ``centered``: the I-frame as above, residuals ``(u8 - 128) * 0.0167``, so a zero residual is
  exactly 0.

Motion channels (``mv_channels=true``): ``u8 = clip(mv * 127.5 / 20 + 128, 0, 255)`` then
``u8 / 255 - 0.5`` (CoViAR's quantisation; +-20 px spans the range). The I-frame slot of the motion
channels is zero motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from brisk.video.cache import ClipArrays
from brisk.video.settings import DEFAULT_SCALES, EVAL_CROPS, NORMALIZATIONS

MFNET_MEAN = (124.0, 117.0, 104.0)
MFNET_SCALE = 0.0167


@dataclass(frozen=True)
class CropBox:
    """A crop ``[y, y + h) x [x, x + w)`` of the cached frame, resized to ``out``, maybe flipped."""

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
    """An ``out`` x ``out`` centre crop; smaller frames give the largest centred square."""
    side = min(out, height, width)
    return CropBox((height - side) // 2, (width - side) // 2, side, side, out, flip=False)


def eval_crop_boxes(height: int, width: int, out: int, crops: int) -> list[CropBox]:
    """The test-time views of a frame, the protocols papers report:

    - 1: the ``out`` x ``out`` centre crop;
    - 3: three squares of the short side at the left, centre and right (top, centre, bottom for a
      portrait frame), each resized to ``out``: the short-side-resize protocol of Non-local and
      SlowFast;
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
    frame: cropping that (non-square) box and resizing it to ``out`` is the same as squashing the
    frame first, the MFCD-Net authors' preprocessing, without resampling the whole frame."""
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


def _window(a: np.ndarray, box: CropBox) -> np.ndarray:
    """Crop ``(T, H, W, C)`` arrays as a view, unmirrored (rows stay contiguous runs)."""
    return a[:, box.y : box.y + box.h, box.x : box.x + box.w]


def _crop(a: np.ndarray, box: CropBox) -> np.ndarray:
    """Crop (and mirror) ``(T, H, W, C)`` arrays as a view."""
    a = _window(a, box)
    return a[:, :, ::-1] if box.flip else a


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """``(T, h, w, C)`` -> float32 ``(C, T, h, w)``."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(3, 0, 1, 2).float()


def _resize_u8(a: np.ndarray, out: int, flip: bool = False) -> torch.Tensor:
    """uint8 ``(T, h, w, C)`` -> uint8 ``(T, out, out, C)``, bilinear, mirrored after with ``flip``.

    The frames are handed to torch as a channels-last ``(T, C, h, w)`` view of the same memory, the
    layout its uint8 bilinear kernel is vectorised for: no float copy of the crop is ever made.
    Mirroring the (smaller) output rather than the crop keeps the copy of the crop a run of row
    copies; with ``align_corners=False`` the bilinear grid is symmetric, so the order does not
    change the result.
    """
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.shape[1:3] != (out, out):
        y = F.interpolate(
            t.permute(0, 3, 1, 2), size=(out, out), mode="bilinear", align_corners=False
        )
        t = y.permute(0, 2, 3, 1)
    return t.flip(2) if flip else t


def motion_u8(mv: torch.Tensor) -> torch.Tensor:
    """CoViAR's motion quantisation ``clip(floor(mv * 127.5 / 20 + 128), 0, 255)``, as uint8."""
    return torch.clamp(torch.floor(mv * (127.5 / 20.0) + 128.0), 0, 255).to(torch.uint8)


def make_clip_u8(
    arrays: ClipArrays, box: CropBox, with_rgb: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The clip as it travels through the DataLoader: uint8, cropped and resized, not normalised.

    Returns ``input`` uint8 ``(C, T, out, out)``: the I-frame and the quantised residuals
    ``clip(R + 128)`` in channels 0-2, quantised motion in 3-4 with ``mv_channels``; and ``rgb``
    uint8 ``(3, T, out, out)``, or None when no teacher needs it. Both are ``(C, T, H, W)`` views of
    ``(T, H, W, C)`` memory, the channels-last layout the 3D convolutions run in.
    :func:`normalise_clip` finishes the job on the device, where it costs nothing: a float32 item
    is 4x the bytes to build, pickle between processes, collate and copy to the accelerator.
    """
    rgb = _window(arrays.rgb, box)  # (T, h, w, 3) view
    residual = _window(arrays.residual, box)
    rgb_u8 = None
    if with_rgb:
        # the I-frame is the rgb's first frame: one resize serves the teacher and the clip
        rgb_u8 = _resize_u8(rgb, box.out, box.flip)  # (T, out, out, 3)
        parts = [torch.cat([rgb_u8[:1], _resize_u8(residual, box.out, box.flip)])]
    else:
        frames = np.concatenate([rgb[:1], residual])  # I-frame, then residuals
        parts = [_resize_u8(frames, box.out, box.flip)]
    if arrays.motion is not None:
        mv = _to_tensor(_crop(arrays.motion, box))  # (2, T-1, h, w), pixels
        if box.flip:
            mv[0].neg_()
        mv[0] *= box.out / box.w
        mv[1] *= box.out / box.h
        mv = torch.cat([torch.zeros_like(mv[:, :1]), mv], dim=1)  # the I-frame slot: no motion
        parts.append(motion_u8(_resize(mv, box.out)).permute(1, 2, 3, 0))
    clip = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).permute(3, 0, 1, 2)
    return clip, None if rgb_u8 is None else rgb_u8.permute(3, 0, 1, 2)


def normalise_clip(clip: torch.Tensor, normalization: str = "mfnet") -> torch.Tensor:
    """uint8 ``(..., C, T, H, W)`` clips (one or a batch) -> the float32 network input.

    Channels 0-2: MFNet's ``(u8 - mean) * 0.0167`` for the I-frame and, with ``mfnet``, for the
    residuals too; ``centered`` maps the residuals as ``(u8 - 128) * 0.0167``. Channels 3-4
    (motion): ``u8 / 255 - 0.5``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}: expected one of {NORMALIZATIONS}")
    x = clip.float()
    c = x.shape[-4]
    shape = (3, 1, 1, 1)
    mean = torch.tensor(MFNET_MEAN, device=x.device).view(shape)
    rgb = x.narrow(-4, 0, 3)
    out = [(rgb - mean) * MFNET_SCALE]
    if normalization == "centered":
        res = (rgb.narrow(-3, 1, rgb.shape[-3] - 1) - 128.0) * MFNET_SCALE
        out[0] = torch.cat([out[0].narrow(-3, 0, 1), res], dim=-3)
    if c > 3:
        out.append(x.narrow(-4, 3, c - 3) / 255.0 - 0.5)
    return torch.cat(out, dim=-4) if len(out) > 1 else out[0]


def rgb_unit(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> float32 in [0, 1], what the teachers take."""
    return rgb.float().div_(255.0)
