"""Motion vectors and motion-compensated residuals, vectorised over pixels.

Sign convention (used everywhere in brisk): a motion vector is ``dst - src`` in integer pixels, i.e.
it points in the direction the content moved. An object moving right by 2 px per frame gives
``x = +2``. This is CoViAR's convention and the negative of FFmpeg's ``motion / motion_scale``.

A pixel whose motion vector points outside the frame is handled by
``border`` (``dataset.mv_border``):

- ``skip`` (default, CoViAR's rule): the pixel keeps its previous source, i.e. that vector is
  ignored for that pixel. The accumulated residual then matches CoViAR's ``accumulate=True`` loader
  exactly.
- ``clamp``: the reference is clamped to the border, which is what the codec's edge extension does
  for unrestricted motion vectors.
"""

from __future__ import annotations

import numpy as np

from brisk.video.settings import MV_BORDERS

#: FFmpeg ``AVMotionVector`` fields kept, in order (``flags`` is always 0 and is dropped).
MV_FIELDS = (
    "source",
    "w",
    "h",
    "src_x",
    "src_y",
    "dst_x",
    "dst_y",
    "motion_x",
    "motion_y",
    "motion_scale",
)


def motion_vector_rows(frame) -> np.ndarray:
    """The exported motion vectors of a decoded frame as a packed ``int32 (N, 10)`` array.

    PyAV returns an aligned structured array with uninitialised padding bytes, so two identical
    decodes differ byte-wise; copying the ten fields makes the result comparable and hashable.
    Frames without side data (I-frames, or export switched off) give an empty array.
    """
    side = frame.side_data.get("MOTION_VECTORS")
    if side is None:
        return np.zeros((0, len(MV_FIELDS)), dtype=np.int32)
    raw = side.to_ndarray()
    out = np.empty((raw.shape[0], len(MV_FIELDS)), dtype=np.int32)
    for i, name in enumerate(MV_FIELDS):
        out[:, i] = raw[name]
    return out


def rasterise(rows: np.ndarray, height: int, width: int, cell: int) -> np.ndarray:
    """Dense ``int16 (2, ceil(H/cell), ceil(W/cell))`` field of ``dst - src`` (x, y) per cell.

    Only past-referenced vectors (``source == -1``) are drawn; cells without a vector (intra blocks)
    are zero. Blocks are grouped by size so the work is a few vectorised scatters, never a loop over
    blocks. A block smaller than ``cell`` fills the one cell that holds its top-left corner.
    """
    hc, wc = -(-height // cell), -(-width // cell)
    # Macroblocks may overhang the right/bottom border; draw on a padded grid, then crop.
    hp, wp = hc + 64 // cell + 1, wc + 64 // cell + 1
    field = np.zeros((2, hp * wp), dtype=np.int16)
    fwd = rows[rows[:, 0] == -1] if rows.size else rows
    if fwd.shape[0] == 0:
        return field.reshape(2, hp, wp)[:, :hc, :wc].copy()
    fast = _rasterise_uniform(fwd, hc, wc, cell)
    if fast is not None:
        return fast
    dx = (fwd[:, 5] - fwd[:, 3]).astype(np.int16)
    dy = (fwd[:, 6] - fwd[:, 4]).astype(np.int16)
    nx = np.maximum(fwd[:, 1] // cell, 1)
    ny = np.maximum(fwd[:, 2] // cell, 1)
    x0 = np.maximum((fwd[:, 5] - fwd[:, 1] // 2) // cell, 0)
    y0 = np.maximum((fwd[:, 6] - fwd[:, 2] // 2) // cell, 0)
    # Every block covers at most (max ny) x (max nx) cells: draw that box, masked to block size.
    mx, my = int(nx.max()), int(ny.max())
    flat = ((y0 * wp + x0)[:, None, None] + (np.arange(my) * wp)[None, :, None]) + np.arange(mx)
    if (nx == mx).all() and (ny == my).all():
        field[0, flat] = dx[:, None, None]
        field[1, flat] = dy[:, None, None]
    else:
        keep = (np.arange(my)[None, :, None] < ny[:, None, None]) & (
            np.arange(mx)[None, None, :] < nx[:, None, None]
        )
        shape = flat.shape
        field[0, flat[keep]] = np.broadcast_to(dx[:, None, None], shape)[keep]
        field[1, flat[keep]] = np.broadcast_to(dy[:, None, None], shape)[keep]
    field = field.reshape(2, hp, wp)
    return field[:, :hc, :wc].copy()


def _rasterise_uniform(fwd: np.ndarray, hc: int, wc: int, cell: int) -> np.ndarray | None:
    """Fast path when every block has the same aligned size (MPEG-4 frames without 4MV blocks):
    draw on the block grid, then repeat to cells. Returns None when the blocks are mixed."""
    b = int(fwd[0, 1])
    w, h, x, y = fwd[:, 1], fwd[:, 2], fwd[:, 5] - b // 2, fwd[:, 6] - b // 2
    if b % cell or not (
        (w == b).all() and (h == b).all() and not (x % b).any() and not (y % b).any()
    ):
        return None
    k = b // cell
    grid = np.zeros((2, -(-hc // k) + 1, -(-wc // k) + 1), dtype=np.int16)
    gy, gx = y // b, x // b
    grid[0, gy, gx] = fwd[:, 5] - fwd[:, 3]
    grid[1, gy, gx] = fwd[:, 6] - fwd[:, 4]
    if k > 1:
        grid = grid.repeat(k, axis=1).repeat(k, axis=2)
    return np.ascontiguousarray(grid[:, :hc, :wc])


class MotionCompensator:
    """Per-frame and accumulated (CoViAR) motion compensation for one frame size.

    Everything per pixel is a flat-index gather (``np.take`` with ``intp`` indices, which measured
    several times faster than fancy indexing; gathering whole RGB rows with ``axis=0`` measured
    faster than gathering packed ``uint32`` pixels, whose strided 3-of-4-byte view then slows the
    subtraction). The source index of a pixel is its own index minus the flat offset ``dy * W + dx``
    of its cell; only cells whose source box leaves the frame need per-pixel border handling
    (``skip`` or ``clamp``), and those are handled separately, so the common case is one gather and
    one subtraction. (Frames must come from PyAV's ``rgb24`` conversion: its ``rgba``/``bgra`` paths
    leave the last columns uninitialised when the width is not a multiple of 16, e.g. 340.)
    ``border``: what a pixel whose source leaves the frame gets (see the module docstring).
    """

    def __init__(self, height: int, width: int, cell: int, border: str = "skip") -> None:
        if border not in MV_BORDERS:
            raise ValueError(f"mv_border={border!r}: expected one of {MV_BORDERS}")
        self.height, self.width, self.cell, self.border = height, width, cell, border
        hc, wc = -(-height // cell), -(-width // cell)
        self.identity = np.arange(height * width, dtype=np.intp)
        ys, xs = np.divmod(self.identity, width)
        self.cell_index = (ys // cell) * wc + xs // cell
        # Pixel box of every cell (edge cells may be partial: indices clamped, duplicates harmless).
        cy = np.arange(hc)[:, None] * cell
        cx = np.arange(wc)[None, :] * cell
        self.cell_x0 = np.broadcast_to(cx, (hc, wc)).ravel()
        self.cell_y0 = np.broadcast_to(cy, (hc, wc)).ravel()
        self.cell_x1 = np.minimum(self.cell_x0 + cell, width) - 1
        self.cell_y1 = np.minimum(self.cell_y0 + cell, height) - 1
        oy, ox = np.divmod(np.arange(cell * cell), cell)
        py = np.minimum(self.cell_y0[:, None] + oy[None, :], height - 1)
        px = np.minimum(self.cell_x0[:, None] + ox[None, :], width - 1)
        self.cell_pixels = py * width + px

    def source_index(self, field: np.ndarray) -> np.ndarray:
        """Flat index of the reference pixel each pixel is predicted from: ``x - mv``, or for a
        source outside the frame its own index (``skip``) or the clamped source (``clamp``)."""
        dx = field[0].ravel().astype(np.intp)
        dy = field[1].ravel().astype(np.intp)
        index = self.identity - np.take(dy * self.width + dx, self.cell_index)
        outside = (
            (self.cell_x0 - dx < 0)
            | (self.cell_x1 - dx >= self.width)
            | (self.cell_y0 - dy < 0)
            | (self.cell_y1 - dy >= self.height)
        )
        if outside.any():
            cells = np.flatnonzero(outside)
            pix = self.cell_pixels[cells]
            py, px = np.divmod(pix, self.width)
            sy, sx = py - dy[cells, None], px - dx[cells, None]
            if self.border == "clamp":
                index[pix] = np.clip(sy, 0, self.height - 1) * self.width + np.clip(
                    sx, 0, self.width - 1
                )
            else:
                inside = (sy >= 0) & (sy < self.height) & (sx >= 0) & (sx < self.width)
                index[pix] = np.where(inside, sy * self.width + sx, pix)
        return index

    @staticmethod
    def gather(rgb: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Pixels of an ``(H, W, 3) uint8`` frame at flat ``index``, as ``(H, W, 3) uint8``."""
        return np.take(rgb.reshape(-1, 3), index, axis=0).reshape(rgb.shape)

    def accumulated_motion(self, src: np.ndarray) -> np.ndarray:
        """``x - src(x)`` as ``int16 (H, W, 2)`` (x, y): the motion traced back to the I-frame."""
        sy, sx = np.divmod(src, self.width)
        y, x = np.divmod(self.identity, self.width)
        out = np.empty((self.height * self.width, 2), dtype=np.int16)
        out[:, 0] = x - sx
        out[:, 1] = y - sy
        return out.reshape(self.height, self.width, 2)


def residual(frame: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``frame - prediction`` (both ``uint8 (H, W, 3)``) as ``int16``."""
    return np.subtract(frame, prediction, dtype=np.int16)


def residual_as_u8(res: np.ndarray) -> np.ndarray:
    """CoViAR/MFCD storage of a residual: ``clip(R + 128, 0, 255)`` as ``uint8``."""
    return (np.clip(res, -128, 127).astype(np.int8).view(np.uint8) ^ np.uint8(0x80)).astype(
        np.uint8
    )


def frame_minus_prediction_u8(frame: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``residual_as_u8(residual(frame, prediction))`` in one pass over int16 (the cache path)."""
    diff = np.subtract(frame, prediction, dtype=np.int16)
    np.clip(diff, -128, 127, out=diff)
    # int8 two's complement XOR 0x80 is x + 128 as uint8.
    return diff.astype(np.int8).view(np.uint8) ^ np.uint8(0x80)
