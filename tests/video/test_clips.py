"""Crops, flips and normalisation of clip tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brisk.video.cache import ClipArrays
from brisk.video.clips import (
    CropBox,
    centre_crop,
    make_clip_u8,
    normalise_clip,
    random_crop,
    rgb_unit,
)


def make_clip(a: ClipArrays, box: CropBox, normalization: str = "mfnet"):
    """The clip as the network gets it: built in the loader, finished on the device."""
    clip, rgb = make_clip_u8(a, box)
    assert rgb is not None
    return normalise_clip(clip, normalization), rgb_unit(rgb)


def coviar_motion(mv: float) -> float:
    """CoViAR's quantisation of a motion value, normalised: clip(floor(mv * 6.375 + 128)) / 255 -
    0.5."""
    return float(np.clip(np.floor(mv * 127.5 / 20 + 128), 0, 255)) / 255 - 0.5


def arrays(h=20, w=30, t=12, motion=True, seed=0) -> ClipArrays:
    rng = np.random.default_rng(seed)
    return ClipArrays(
        rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        rng.integers(0, 256, (t - 1, h, w, 3), dtype=np.uint8),
        rng.integers(-30, 31, (t - 1, h, w, 2)).astype(np.int8) if motion else None,
    )


def test_flip_mirrors_pixels_and_negates_x_motion():
    a = arrays()
    plain, rgb = make_clip(a, CropBox(2, 3, 16, 16, 16, flip=False))
    flipped, rgb_f = make_clip(a, CropBox(2, 3, 16, 16, 16, flip=True))
    assert plain.shape == (5, 12, 16, 16)
    torch.testing.assert_close(flipped[:3], plain[:3].flip(-1))
    torch.testing.assert_close(rgb_f, rgb.flip(-1))
    # x motion changes sign (quantised around 128/255 - 0.5), y motion does not.
    centre = 128 / 255 - 0.5
    torch.testing.assert_close(
        flipped[3] - centre, -(plain[3] - centre).flip(-1), atol=1.5 / 255, rtol=0
    )
    torch.testing.assert_close(flipped[4], plain[4].flip(-1))


def test_input_layout_iframe_then_residuals_and_rgb_in_unit_range():
    a = arrays(motion=False)
    clip, rgb = make_clip(a, CropBox(0, 0, 20, 20, 20))
    assert clip.shape == (3, 12, 20, 20) and clip.dtype == torch.float32
    assert rgb.shape == (3, 12, 20, 20) and rgb.dtype == torch.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    mean = torch.tensor([124.0, 117.0, 104.0]).view(3, 1, 1)
    iframe = torch.from_numpy(a.rgb[0, :, :20].astype(np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(clip[:, 0], (iframe - mean) * 0.0167)
    res = torch.from_numpy(a.residual[4, :, :20].astype(np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(clip[:, 5], (res - mean) * 0.0167)
    centred, _ = make_clip(a, CropBox(0, 0, 20, 20, 20), normalization="centered")
    torch.testing.assert_close(centred[:, 5], (res - 128) * 0.0167)
    torch.testing.assert_close(centred[:, 0], clip[:, 0])
    with pytest.raises(ValueError, match="normalization"):
        make_clip(a, CropBox(0, 0, 20, 20, 20), normalization="imagenet")


def test_resize_scales_motion_with_the_crop():
    a = arrays(motion=True)
    a.motion[...] = 0
    a.motion[..., 0] = 4  # 4 px right everywhere
    clip, _ = make_clip(a, CropBox(0, 0, 10, 10, 20))  # upscaled 2x
    torch.testing.assert_close(clip[3, 1:], torch.full_like(clip[3, 1:], coviar_motion(8.0)))
    # The I-frame slot carries zero motion.
    torch.testing.assert_close(clip[3, 0], torch.full_like(clip[3, 0], coviar_motion(0.0)))


@pytest.mark.parametrize("mv", [-100, -20, -1, 0, 3, 20, 100])
def test_motion_channels_are_coviars_quantisation(mv: int) -> None:
    a = arrays(motion=True)
    a.motion[...] = max(-127, min(127, mv))
    clip, _ = make_clip(a, CropBox(0, 0, 20, 20, 20))  # no resize: the values pass unscaled
    torch.testing.assert_close(clip[3:, 1:], torch.full_like(clip[3:, 1:], coviar_motion(mv)))


def test_random_crop_is_reproducible_and_inside_the_frame():
    boxes = [
        random_crop(256, 340, 224, generator=torch.Generator().manual_seed(s)) for s in range(50)
    ]
    again = [
        random_crop(256, 340, 224, generator=torch.Generator().manual_seed(s)) for s in range(50)
    ]
    assert boxes == again
    for b in boxes:
        assert b.y >= 0 and b.y + b.h <= 256 and b.x >= 0 and b.x + b.w <= 340
        assert min(b.h, b.w) >= round(256 * 0.66)
    assert {b.flip for b in boxes} == {True, False}
    assert not any(random_crop(64, 64, 56, flip=False).flip for _ in range(20))
    assert centre_crop(256, 340, 224) == CropBox(16, 58, 224, 224, 224, False)


@pytest.mark.parametrize("with_rgb", [True, False])
def test_resized_flip_is_the_exact_mirror_and_the_teacher_sees_the_clips_i_frame(with_rgb) -> None:
    """Mirroring after the resize (cheaper) gives the mirror of the unflipped item, bit for bit."""
    rng = np.random.default_rng(3)
    arrays = ClipArrays(
        rng.integers(0, 256, (12, 40, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, (11, 40, 50, 3), dtype=np.uint8),
    )
    plain, rgb = make_clip_u8(arrays, CropBox(3, 5, 33, 29, 24, flip=False), with_rgb)
    flipped, rgb_f = make_clip_u8(arrays, CropBox(3, 5, 33, 29, 24, flip=True), with_rgb)
    assert torch.equal(flipped, plain.flip(-1))
    student_only, _ = make_clip_u8(arrays, CropBox(3, 5, 33, 29, 24, flip=True), False)
    assert torch.equal(flipped, student_only)  # the teacher's rgb changes nothing in the input
    if with_rgb:
        assert torch.equal(rgb_f, rgb.flip(-1))
        assert torch.equal(flipped[:, 0], rgb_f[:, 0])  # one resize serves both
    else:
        assert rgb is None and rgb_f is None
