"""Preparation: corrupt inputs are reported and skipped, runs resume, the manifest tells all."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brisk.video.cache import CacheSettings, ClipStore, VideoCache, prepare
from brisk.video.codec import VideoDecodeError, reencode, write_video
from brisk.video.synthetic import render_video

SETTINGS = CacheSettings(size=(32, 32), gop_size=12, motion_vectors=True)


def corrupt_inputs(tmp_path):
    """The three kinds of broken file users have: cut off, empty, and not a video at all."""
    good = tmp_path / "src" / "good.avi"
    write_video(good, render_video(0, 0, frames=30, size=32), gop_size=30)
    truncated = tmp_path / "src" / "truncated.avi"
    write_video(truncated, render_video(1, 1, frames=30, size=32), gop_size=30)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    truncated_mp4 = tmp_path / "src" / "truncated.mp4"
    write_video(truncated_mp4, render_video(1, 1, frames=30, size=32))
    truncated_mp4.write_bytes(truncated_mp4.read_bytes()[:2000])
    empty = tmp_path / "src" / "empty.avi"
    empty.write_bytes(b"")
    text = tmp_path / "src" / "readme.avi"
    text.write_text("this is a text file with a video extension\n")
    return good, [truncated, truncated_mp4, empty, text]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_inputs_are_reported_and_skipped(tmp_path, workers, caplog):
    good, broken = corrupt_inputs(tmp_path)
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    jobs = [(p, p.name) for p in [good, *broken]]
    with caplog.at_level("WARNING", logger="brisk.video"):
        report = prepare(cache, jobs, workers=workers, name="t")
    assert list(report.records) == ["good.avi"]
    reasons = {f["rel"]: f["reason"] for f in report.failures}
    assert set(reasons) == {p.name for p in broken}
    assert "truncated" in reasons["truncated.avi"]
    assert "0 bytes" in reasons["empty.avi"]
    assert "Invalid data" in reasons["readme.avi"]
    assert "4 of 5 videos could not be used" in caplog.text
    manifest = json.loads((cache.root / "manifest.json").read_text())
    assert manifest["videos_ok"] == 1 and manifest["videos_failed"] == 4
    assert manifest["records"][0]["gop_frames"] == [12, 12, 6]
    listed = (cache.root / "failures.txt").read_text().splitlines()
    assert len(listed) == 4 and all("\t" in line for line in listed)
    # The good video is fully usable.
    clip = ClipStore(cache).load("good.avi", 2)
    assert clip.rgb.shape == (12, 32, 32, 3) and clip.residual.shape == (11, 32, 32, 3)


def test_preparation_resumes_and_reuses_finished_videos(tmp_path):
    srcs = []
    for i in range(3):
        p = tmp_path / "src" / f"v{i}.avi"
        write_video(p, render_video(i, i, frames=14, size=32), gop_size=30)
        srcs.append(p)
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    first = prepare(cache, [(p, p.name) for p in srcs[:2]])
    assert (first.prepared, first.reused) == (2, 0)
    stamp = cache.clip_path("v0.avi", "res").stat().st_mtime_ns

    # An interrupted run: v2's arrays were written (or half-written) but its record was not.
    cache.clip_path("v2.avi", "rgb").parent.mkdir(parents=True, exist_ok=True)
    cache.clip_path("v2.avi", "rgb").write_bytes(b"half a file")
    second = prepare(cache, [(p, p.name) for p in srcs])
    assert (second.prepared, second.reused) == (1, 2)
    assert cache.clip_path("v0.avi", "res").stat().st_mtime_ns == stamp
    assert ClipStore(cache).load("v2.avi", 0).rgb.shape == (12, 32, 32, 3)

    # A changed source is prepared again; an unchanged one is not.
    write_video(srcs[1], render_video(5, 5, frames=26, size=32), gop_size=30)
    third = prepare(cache, [(p, p.name) for p in srcs])
    assert (third.prepared, third.reused) == (1, 2)
    assert third.records["v1.avi"]["gop_frames"] == [12, 12, 2]


def test_failed_videos_are_not_retried_until_the_source_changes(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_text("nope")
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    assert prepare(cache, [(bad, "bad.avi")]).prepared == 1
    again = prepare(cache, [(bad, "bad.avi")])
    assert (again.prepared, again.reused, len(again.failures)) == (0, 1, 1)
    write_video(bad, render_video(0, 0, frames=14, size=32), gop_size=30)
    fixed = prepare(cache, [(bad, "bad.avi")])
    assert fixed.prepared == 1 and "bad.avi" in fixed.records


def test_cached_and_live_clips_are_identical(tmp_path):
    src = tmp_path / "v.avi"
    write_video(src, render_video(4, 3, frames=30, size=32), gop_size=30)
    cached = VideoCache(tmp_path / "cache", SETTINGS)
    prepare(cached, [(src, "v.avi")])
    live = VideoCache(
        tmp_path / "cache", CacheSettings(size=(32, 32), motion_vectors=True, clips=False)
    )
    for g in (0, 1, 2):
        a, b = ClipStore(cached).load("v.avi", g), ClipStore(live).load("v.avi", g)
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.residual, b.residual)
        np.testing.assert_array_equal(a.motion, b.motion)
    # The short last GOP (6 frames) is padded by repeating its last frame and residual.
    last = ClipStore(cached).load("v.avi", 2)
    np.testing.assert_array_equal(last.rgb[6:], np.repeat(last.rgb[5:6], 6, axis=0))
    np.testing.assert_array_equal(last.residual[5:], np.repeat(last.residual[4:5], 6, axis=0))


def test_reencode_is_idempotent_and_drops_audio(tmp_path):
    src = tmp_path / "v.avi"
    write_video(src, render_video(0, 0, frames=30, size=32), gop_size=30)
    dst = tmp_path / "v.mp4"
    index = reencode(src, dst, size=(48, 32))
    assert index.gop_frames == (12, 12, 6) and (index.width, index.height) == (48, 32)
    stamp = dst.stat().st_mtime_ns
    assert reencode(src, dst, size=(48, 32)) == index
    assert dst.stat().st_mtime_ns == stamp
    with pytest.raises(VideoDecodeError, match="no such file"):
        reencode(tmp_path / "missing.avi", tmp_path / "m.mp4")
    with pytest.raises(ValueError, match="qscale"):
        reencode(src, tmp_path / "q.mp4", qscale=0)


@pytest.mark.shared_data
def test_reencode_drops_audio_and_reads_gif(shared_data, tmp_path):
    import av

    avi = shared_data / "video" / "ucf101" / "ApplyEyeMakeup" / "mmaction2_tests_data_test.avi"
    gif = shared_data / "video" / "ucf101" / "CricketShot" / "v_CricketShot_g04_c01_rgb.gif"
    if not (avi.is_file() and gif.is_file()):
        pytest.skip("clips not present")
    reencode(avi, tmp_path / "a.mp4")
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert not c.streams.audio and c.streams.video[0].codec_context.name == "mpeg4"
    assert reencode(gif, tmp_path / "g.mp4").num_frames == 79


def _truncate(path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@pytest.mark.parametrize("kind", ["rgb", "res", "mv", "video"])
def test_a_cut_off_cache_file_is_prepared_again(tmp_path, kind):
    srcs = []
    for i in range(2):
        srcs.append(tmp_path / "src" / f"v{i}.avi")
        write_video(srcs[-1], render_video(i, i, frames=14, size=32), gop_size=30)
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    jobs = [(p, p.name) for p in srcs]
    prepare(cache, jobs)
    path = cache.video_path("v1.avi") if kind == "video" else cache.clip_path("v1.avi", kind)
    whole = path.read_bytes()
    _truncate(path)
    again = prepare(cache, jobs)
    assert (again.prepared, again.reused) == (1, 1)
    assert path.read_bytes() == whole


def test_records_written_without_sizes_still_catch_a_cut_off_clip(tmp_path):
    src = tmp_path / "src" / "v.avi"
    write_video(src, render_video(0, 0, frames=14, size=32), gop_size=30)
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    prepare(cache, [(src, "v.avi")])
    record = json.loads(cache.record_path("v.avi").read_text())
    del record["files"]  # as records of an older brisk
    cache.record_path("v.avi").write_text(json.dumps(record))
    assert prepare(cache, [(src, "v.avi")]).reused == 1  # intact: nothing to do
    _truncate(cache.clip_path("v.avi", "res"), 0.9)
    assert prepare(cache, [(src, "v.avi")]).prepared == 1


def test_a_clip_damaged_during_training_is_one_line_naming_the_file(tmp_path):
    import pickle

    from tests.video.conftest import tiny_shapes

    from brisk.errors import UserError

    dm = tiny_shapes(tmp_path)
    dm.setup()
    path = dm.cache.clip_path(dm.train_dataset().videos[0].rel, "rgb")
    _truncate(path)
    worker_copy = pickle.loads(pickle.dumps(dm.train_dataset()))  # opens the files anew
    with pytest.raises(UserError) as err:
        worker_copy[0]
    message = str(err.value)
    assert str(path) in message and "prepare-video" in message and "\n" not in message


def test_a_damaged_clip_read_by_a_loader_worker_stays_one_line(tmp_path):
    from tests.video.conftest import tiny_shapes
    from torch.utils.data import DataLoader

    from brisk.video.cache import DamagedCacheError

    dm = tiny_shapes(tmp_path)
    dm.setup()
    path = dm.cache.clip_path(dm.train_dataset().videos[0].rel, "rgb")
    _truncate(path)
    loader = DataLoader(dm.train_dataset(), batch_size=2, num_workers=1)
    with pytest.raises(DamagedCacheError) as err:
        next(iter(loader))
    assert str(err.value).startswith(f"the cached file {path} is damaged")
    assert "\n" not in str(err.value)


def test_the_progress_line_says_what_it_knows(tmp_path, caplog):
    srcs = []
    for i in range(3):
        srcs.append(tmp_path / "src" / f"v{i}.avi")
        write_video(srcs[-1], render_video(i, i, frames=14, size=32), gop_size=30)
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    jobs = [(p, p.name) for p in srcs]
    with caplog.at_level("INFO", logger="brisk.video"):
        prepare(cache, jobs, name="t", progress_every=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("t: ")]
    assert "ETA after 3 videos" in lines[0] and "ETA" not in lines[-1].replace("ETA after", "")
    assert lines[-1].endswith("videos/s, done")
    caplog.clear()
    with caplog.at_level("INFO", logger="brisk.video"):
        prepare(cache, jobs, name="t")
    assert "t: 3/3 videos (3 reused, 0 failed), all reused" in caplog.text
    assert "0.0 videos/s" not in caplog.text
