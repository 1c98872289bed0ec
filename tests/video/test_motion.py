"""Rasterising motion vectors and motion compensation on hand-made inputs."""

from __future__ import annotations

import numpy as np

from brisk.video.motion import (
    MotionCompensator,
    frame_minus_prediction_u8,
    rasterise,
    residual_as_u8,
)


def row(w, h, dst_x, dst_y, dx, dy, source=-1):
    """One exported vector: w x h block centred at (dst_x, dst_y), moved by (dx, dy) = dst - src."""
    return [source, w, h, dst_x - dx, dst_y - dy, dst_x, dst_y, -2 * dx, -2 * dy, 2]


def test_rasterise_uniform_and_mixed_blocks_agree_with_a_per_block_reference():
    rng = np.random.default_rng(0)
    h, w, cell = 40, 52, 4
    # Uniform 16x16 macroblocks (fast path), then a mix with 8x8 blocks (general path).
    for sizes in ([16], [16, 8]):
        rows = []
        for by in range(0, h + 8, 16):
            for bx in range(0, w + 8, 16):
                b = int(rng.choice(sizes))
                for oy in range(0, 16, b):
                    for ox in range(0, 16, b):
                        rows.append(
                            row(b, b, bx + ox + b // 2, by + oy + b // 2, *rng.integers(-9, 9, 2))
                        )
        rows.append(row(16, 16, 8, 8, 5, 5, source=1))  # a backward vector is ignored
        rows = np.array(rows, dtype=np.int32)
        field = rasterise(rows, h, w, cell)
        ref = np.zeros((2, -(-h // cell), -(-w // cell)), dtype=np.int16)
        for r in rows[rows[:, 0] == -1]:  # the slow per-block loop, as a reference only
            y0, x0 = (r[6] - r[2] // 2) // cell, (r[5] - r[1] // 2) // cell
            ref[0, y0 : y0 + r[2] // cell, x0 : x0 + r[1] // cell] = r[5] - r[3]
            ref[1, y0 : y0 + r[2] // cell, x0 : x0 + r[1] // cell] = r[6] - r[4]
        np.testing.assert_array_equal(field, ref)
    assert not rasterise(np.zeros((0, 10), np.int32), h, w, cell).any()


def _border_field() -> np.ndarray:
    field = np.zeros((2, 2, 2), dtype=np.int16)
    field[0, 0, 1] = 3  # the top-right block moved 3 px right: predicted from 3 px to its left
    field[1, 1, 0] = 5  # the bottom-left block moved 5 px down
    field[0, 1, 1] = -6  # the bottom-right block moved left: its source leaves the frame, right
    return field


def test_source_index_moves_blocks_and_clamps_at_the_border():
    src = MotionCompensator(16, 16, 8, border="clamp").source_index(_border_field())
    ys, xs = np.divmod(src.reshape(16, 16), 16)
    assert (xs[0:8, 8:16] == np.arange(5, 13)).all()
    assert (ys[0:8, 8:16] == np.arange(8)[:, None]).all()
    assert (ys[8:16, 0:8] == np.arange(3, 11)[:, None]).all()
    assert (xs[8:16, 8:16] == np.minimum(np.arange(14, 22), 15)).all()
    assert (src.reshape(16, 16)[0:8, 0:8] == np.arange(256).reshape(16, 16)[0:8, 0:8]).all()


def test_skip_keeps_the_own_pixel_where_the_source_leaves_the_frame():
    mc = MotionCompensator(16, 16, 8)
    assert mc.border == "skip"
    src = mc.source_index(_border_field())
    ys, xs = np.divmod(src.reshape(16, 16), 16)
    # Inside the frame skip and clamp agree; per pixel, a source past the right edge is ignored.
    assert (xs[0:8, 8:16] == np.arange(5, 13)).all()
    assert (ys[8:16, 0:8] == np.arange(3, 11)[:, None]).all()
    assert (xs[8:16, 8:10] == [14, 15]).all()  # x + 6 still inside
    assert (xs[8:16, 10:16] == np.arange(10, 16)).all()  # outside: its own pixel
    assert (ys[8:16, 8:16] == np.arange(8, 16)[:, None]).all()


def test_gather_and_accumulated_motion():
    mc = MotionCompensator(8, 8, 4)
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    field = np.zeros((2, 2, 2), dtype=np.int16)
    field[0] = 1
    src = mc.source_index(field)
    pred = mc.gather(rgb, src)
    np.testing.assert_array_equal(pred[:, 1:], rgb[:, :-1])
    np.testing.assert_array_equal(pred[:, 0], rgb[:, 0])  # clamped at the left border
    # Two steps of +1 px: accumulated motion is +2 except where the border clamped it.
    twice = np.take(src, mc.source_index(field))
    acc = mc.accumulated_motion(twice)
    assert (acc[:, 2:, 0] == 2).all() and (acc[..., 1] == 0).all() and (acc[:, 0, 0] == 0).all()


def test_residual_quantisation_saturates():
    r = np.arange(-300, 300, dtype=np.int16)
    np.testing.assert_array_equal(residual_as_u8(r), np.clip(r + 128, 0, 255))
    rng = np.random.default_rng(1)
    f, p = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        frame_minus_prediction_u8(f, p), np.clip(f.astype(int) - p + 128, 0, 255)
    )
