"""Reader: motion vectors, residuals and GOP access on synthetic and (if present) real videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brisk.video.codec import VideoDecodeError, keyframe_index, reencode, write_video
from brisk.video.motion import MV_FIELDS, motion_vector_rows, rasterise
from brisk.video.reader import PICT_I, PICT_P, GopReader, UnsupportedStreamError


@pytest.mark.parametrize("dx,dy", [(2, 0), (-3, 1), (0, -2), (4, 3)])
def test_motion_vectors_equal_known_motion_inside_the_moving_square(tmp_path, dx, dy, square_video):
    frames, corners = square_video(dx, dy)
    src = tmp_path / "square.avi"
    write_video(src, frames, gop_size=100, qscale=2)
    dst = reencode(src, tmp_path / "square.mp4", size=(128, 96))
    assert dst.gop_frames == (12,)
    with GopReader(tmp_path / "square.mp4", residuals="none") as reader:
        gop = reader.read_gop(0)
        cell = reader.cell
    assert gop.mv.shape == (11, 2, 96 // cell, 128 // cell)
    hits = total = 0
    for t in range(1, 12):
        # Cells of the 16x16 macroblocks lying inside the square in this frame and the previous one
        # (a macroblock straddling the edge may legitimately follow the background).
        (x, y), (px, py) = corners[t], corners[t - 1]
        x_lo, x_hi = -(-max(x, px) // 16) * 16, (min(x, px) + 48) // 16 * 16
        y_lo, y_hi = -(-max(y, py) // 16) * 16, (min(y, py) + 48) // 16 * 16
        cx = slice(x_lo // cell, x_hi // cell)
        cy = slice(y_lo // cell, y_hi // cell)
        # Only inter-coded blocks carry a vector; the encoder may intra-code some blocks.
        rows = gop.mv_rows[t - 1].copy()
        rows[:, 3], rows[:, 4] = rows[:, 5] - 1, rows[:, 6] - 1
        inter = rasterise(rows, 96, 128, cell)[0, cy, cx].ravel() == 1
        field = gop.mv[t - 1][:, cy, cx].reshape(2, -1)[:, inter]
        total += field.shape[1]
        hits += int(((field[0] == dx) & (field[1] == dy)).sum())
        # The static background is not moving.
        assert (gop.mv[t - 1][:, :2, :2] == 0).all()
    assert total >= 5 * 4
    assert hits / total >= 0.9, f"only {hits}/{total} interior cells carry the true motion"


def test_motion_vector_sign_convention_is_dst_minus_src(tmp_path, square_video):
    frames, _ = square_video(3, 0)
    write_video(tmp_path / "a.mp4", frames, gop_size=12, qscale=2)
    import av

    with av.open(str(tmp_path / "a.mp4")) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        rows = [motion_vector_rows(f) for f in c.decode(s)]
    assert rows[0].shape == (0, len(MV_FIELDS))  # I-frame: no vectors
    r = np.concatenate(rows[1:])
    f = {name: r[:, i] for i, name in enumerate(MV_FIELDS)}
    # FFmpeg: src = dst + motion / scale (rounded), so brisk's vector dst - src is -motion/scale.
    np.testing.assert_allclose(
        f["dst_x"] - f["src_x"], -f["motion_x"] / f["motion_scale"], atol=0.5
    )
    np.testing.assert_allclose(
        f["dst_y"] - f["src_y"], -f["motion_y"] / f["motion_scale"], atol=0.5
    )
    assert (f["dst_x"] - f["src_x"] == 3).sum() > 0


@pytest.mark.shared_data
def test_reader_reproduces_golden_motion_vectors(shared_data):
    ref = shared_data / "mv-reference"
    video = ref / "vid_mpeg4_part2.mp4"
    if not video.is_file():
        pytest.skip("mv-reference not present")
    types = (ref / "frame_types.txt").read_text().split()
    with GopReader(video, residuals="none", rgb=False) as reader:
        gops = [reader.read_gop(g) for g in (2, 0, 1)]  # out of order: seeking must not matter
    gops.sort(key=lambda gop: gop.start_frame)
    assert [gop.start_frame for gop in gops] == [0, 12, 24]
    for gop in gops:
        rows_per_frame = [np.zeros((0, 10), np.int32), *gop.mv_rows]
        for i, (pict, rows) in enumerate(zip(gop.pict_types, rows_per_frame, strict=True)):
            k = gop.start_frame + i
            golden = np.load(ref / "motion_vectors" / f"mvs-{k}.npy").reshape(-1, 10)
            assert {"I": PICT_I, "P": PICT_P}[types[k]] == pict, f"frame {k}"
            assert rows.shape == golden.shape, f"frame {k}"
            # Field for field, as sets of rows (the order of blocks is not part of the contract).
            a = rows[np.lexsort(rows.T[::-1])]
            b = golden[np.lexsort(golden.T[::-1])]
            np.testing.assert_array_equal(a, b, err_msg=f"frame {k}")


@pytest.mark.shared_data
def test_reader_gop_boundaries_follow_real_keyframes(shared_data):
    video = shared_data / "mv-reference" / "vid_mpeg4_part2.mp4"
    if not video.is_file():
        pytest.skip("mv-reference not present")
    index = keyframe_index(video)
    # This file has two 6-frame GOPs: frame // 12 would be wrong there.
    assert 6 in index.gop_frames
    assert index.num_frames == 337
    with GopReader(video, residuals="none", rgb=False) as reader:
        g = index.gop_frames.index(6)
        gop = reader.read_gop(g)
        assert gop.num_frames == 6
        assert gop.pict_types == [PICT_I] + [PICT_P] * 5
        assert gop.start_frame == sum(index.gop_frames[:g])


def _real_clips(shared_data: Path) -> list[Path]:
    clips = sorted(p for p in (shared_data / "video").rglob("*") if p.is_file())
    if not clips:
        pytest.skip("no real clips")
    return clips


@pytest.mark.slow
@pytest.mark.shared_data
def test_residual_sanity_and_picture_types_on_real_clips(shared_data, tmp_path):
    acc_ratios, frame_ratios = [], []
    for src in _real_clips(shared_data):
        if "cockatoo" in src.name:
            continue  # 720p source: same pipeline, only slower
        dst = tmp_path / f"{src.stem}.mp4"
        index = reencode(src, dst)
        assert (index.width, index.height) == (340, 256)
        with GopReader(dst, residuals="both") as reader:
            acc_res = acc_diff = frame_res = frame_diff = 0.0
            for gop in reader.iter_gops():
                n = gop.num_frames
                assert gop.pict_types == [PICT_I] + [PICT_P] * (n - 1), src.name
                assert n == 12 or gop.index == reader.num_gops - 1
                if n < 2:
                    continue
                rgb = gop.rgb.astype(np.int16)
                acc_res += np.abs(gop.acc_residual).mean()
                acc_diff += np.abs(rgb[1:] - rgb[:1]).mean()
                frame_res += np.abs(gop.residual).mean()
                frame_diff += np.abs(rgb[1:] - rgb[:-1]).mean()
                # Residuals are consistent with their definition: prediction = frame - residual.
                pred = rgb[1:] - gop.acc_residual
                assert pred.min() >= 0 and pred.max() <= 255
                np.testing.assert_array_equal(
                    gop.acc_residual_u8, np.clip(gop.acc_residual + 128, 0, 255)
                )
        acc_ratios.append(acc_res / acc_diff)
        frame_ratios.append(frame_res / frame_diff)
        # Every clip: motion compensation explains part of the change (a dithered GIF the least) ...
        assert acc_ratios[-1] < 0.85, (src.name, acc_ratios[-1])
        assert frame_ratios[-1] < 0.85, (src.name, frame_ratios[-1])
    # ... and on average most of it (measured 0.44-0.73 accumulated, 0.34-0.79 per frame).
    assert np.mean(acc_ratios) < 0.6, acc_ratios
    assert np.mean(frame_ratios) < 0.6, frame_ratios


@pytest.mark.shared_data
def test_seek_reads_the_same_gop_as_a_sequential_decode(shared_data, tmp_path):
    src = shared_data / "video" / "kinetics400" / "arm_wrestling" / "mmaction2_demo_demo.mp4"
    if not src.is_file():
        pytest.skip("clip not present")
    dst = tmp_path / "demo.mp4"
    reencode(src, dst)
    with GopReader(dst, accumulated_mv=True) as seq:
        gops = list(seq.iter_gops())
    with GopReader(dst, accumulated_mv=True) as rnd:
        for g in (len(gops) - 1, 3, 0, 17):
            a, b = rnd.read_gop(g), gops[g]
            assert a.pict_types == b.pict_types
            for name in ("rgb", "mv", "acc_residual", "acc_mv"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_motion_vector_only_mode_gives_the_same_vectors(tmp_path, square_video):
    frames, _ = square_video(2, -1, frames=26)
    write_video(tmp_path / "a.mp4", frames, gop_size=12)
    with GopReader(tmp_path / "a.mp4", residuals="none", rgb=False) as fast:
        cheap = list(fast.iter_gops())
    with GopReader(tmp_path / "a.mp4", residuals="none") as full:
        for a, b in zip(cheap, full.iter_gops(), strict=True):
            assert a.rgb is None and b.rgb is not None
            np.testing.assert_array_equal(a.mv, b.mv)
            assert a.mv.any()


@pytest.mark.shared_data
def test_b_frames_are_refused_with_a_hint_to_reencode(shared_data):
    src = shared_data / "video" / "ucf101" / "ApplyEyeMakeup" / "mmaction2_tests_data_test.avi"
    if not src.is_file():
        pytest.skip("clip not present")
    with GopReader(src) as reader, pytest.raises(UnsupportedStreamError, match="re-encode"):
        for _ in reader.iter_gops():
            pass


def test_accumulated_residual_of_a_pure_translation_is_small(tmp_path, square_video):
    frames, corners = square_video(2, 1)
    write_video(tmp_path / "a.avi", frames, gop_size=100, qscale=2)
    reencode(tmp_path / "a.avi", tmp_path / "a.mp4", size=(128, 96))
    with GopReader(tmp_path / "a.mp4", residuals="both", accumulated_mv=True) as reader:
        gop = reader.read_gop(0)
    # Inside the square the accumulated motion grows linearly, (2, 1) per frame since the I-frame...
    np.testing.assert_array_equal(gop.acc_mv[-1, 48, 64], [22, 11])
    # ... and tracing pixels back to the I-frame predicts them there (the uncovered background is
    # outside this region) far better than the plain difference to the I-frame. What remains is
    # codec noise: 4:2:0 chroma of a 2-px colour texture changes with every odd shift.
    x, y = corners[-1]
    inside = (slice(None), slice(y + 8, y + 40), slice(x + 8, x + 40))
    rgb = gop.rgb.astype(np.int16)
    acc = np.abs(gop.acc_residual[inside]).mean()
    diff = np.abs((rgb[1:] - rgb[:1])[inside]).mean()
    assert acc < 0.4 * diff, (acc, diff)


def test_gop_index_out_of_range_names_the_file(tmp_path, square_video):
    frames, _ = square_video(1, 0)
    write_video(tmp_path / "a.mp4", frames, gop_size=12)
    with GopReader(tmp_path / "a.mp4") as reader, pytest.raises(IndexError, match="a.mp4"):
        reader.read_gop(5)


def test_a_text_file_is_not_a_video(tmp_path):
    bad = tmp_path / "notes.avi"
    bad.write_text("this is not a video\n")
    with pytest.raises(VideoDecodeError, match="notes.avi"):
        GopReader(bad)
