"""``mv_border: skip`` against CoViAR's accumulation loop, written out plainly, on real clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brisk.video.codec import reencode
from brisk.video.reader import GopReader

# The hand-held HMDB51 clip (its camera shake sends many vectors past the frame edge), a street
# scene with a moving camera and the Kinetics demo clip.
CLIPS = [
    "hmdb51/climb_stairs/Increase_stride_length_by_running_stairs__working_step_over_action_speed"
    "_development_climb_stairs_f_cm_np1_le_med_1.avi",
    "activitynet/v_ZNVhz7ctTq0.mp4",
    "kinetics400/arm_wrestling/mmaction2_demo_demo.mp4",
]
SIZE = (132, 100)  # small (fast per-pixel loop), and not a multiple of 8 or 16: partial blocks


def coviar_accumulate(rows_per_frame: list[np.ndarray], h: int, w: int) -> list[list[list]]:
    """CoViAR's ``accumulate=True`` loop: for each P-frame, for each motion vector, for each pixel
    of its block inside the frame, take over the source of the pixel it points to, unless that pixel
    is outside the frame (then the pixel keeps its previous source). Returns, per P-frame, the
    source (y, x) in the I-frame of every pixel."""
    src = [[(y, x) for x in range(w)] for y in range(h)]
    out = []
    for rows in rows_per_frame:
        old = [line[:] for line in src]
        for source, bw, bh, src_x, src_y, dst_x, dst_y, *_ in rows.tolist():
            if source != -1:
                continue  # a past reference only (brisk refuses streams with other ones)
            mvx, mvy = src_x - dst_x, src_y - dst_y
            for dy in range(-(bh // 2), bh // 2):
                for dx in range(-(bw // 2), bw // 2):
                    r, c = dst_y + dy, dst_x + dx
                    if 0 <= r < h and 0 <= c < w:
                        sr, sc = r + mvy, c + mvx
                        if 0 <= sr < h and 0 <= sc < w:
                            src[r][c] = old[sr][sc]
        out.append([line[:] for line in src])
    return out


def _gops(path: Path, border: str, gops: list[int]) -> list:
    with GopReader(path, residuals="accumulated", accumulated_mv=True, mv_border=border) as r:
        return [r.read_gop(g) for g in gops if g < r.num_gops]


@pytest.mark.shared_data
def test_skip_equals_coviars_accumulation_loop_exactly_on_real_clips(shared_data, tmp_path):
    clamp_differs = 0
    tested = 0
    for rel in CLIPS:
        src = shared_data / "video" / rel
        if not src.is_file():
            continue
        dst = tmp_path / f"{src.stem[:20]}.mp4"
        reencode(src, dst, size=SIZE)
        picks = [1, 3]
        for gop, clamped in zip(_gops(dst, "skip", picks), _gops(dst, "clamp", picks), strict=True):
            h, w = gop.rgb.shape[1:3]
            reference = coviar_accumulate(gop.mv_rows, h, w)
            for t, source in enumerate(reference):
                sy = np.array([[p[0] for p in line] for line in source])
                sx = np.array([[p[1] for p in line] for line in source])
                yy, xx = np.mgrid[0:h, 0:w]
                np.testing.assert_array_equal(gop.acc_mv[t, ..., 0], xx - sx, err_msg=f"{rel} {t}")
                np.testing.assert_array_equal(gop.acc_mv[t, ..., 1], yy - sy, err_msg=f"{rel} {t}")
                expected = gop.rgb[t + 1].astype(np.int16) - gop.rgb[0][sy, sx]
                np.testing.assert_array_equal(gop.acc_residual[t], expected, err_msg=f"{rel} {t}")
                clamp_differs += int((clamped.acc_mv[t] != gop.acc_mv[t]).any(-1).sum())
            tested += 1
    if not tested:
        pytest.skip("real clips not present")
    # The clips do send vectors out of the frame, so the comparison is not vacuous: clamp differs.
    assert clamp_differs > 0
