"""``moving_shapes``: a synthetic action data set whose classes differ only by motion.

Every video shows one textured object on a static textured background; appearance (shape, texture,
colours, background, position) is drawn independently of the class, so only the motion tells the
classes apart: translation right/left/up/down, rotation clockwise/anticlockwise, zoom in/out. Videos
are rendered with numpy (inverse mapping, sub-pixel positions), written as real MPEG-4 files in AVI
containers with a long GOP and then go through the same re-encode and reader pipeline as real data.
Generation is deterministic: the same seed gives the same pixels.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from brisk.errors import UserError
from brisk.progress import TaskProgress
from brisk.video.codec import write_video

CLASSES = (
    "move_right",
    "move_left",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "zoom_in",
    "zoom_out",
)
#: Bumped whenever the rendering changes, so stale generated copies are rebuilt.
GENERATOR_VERSION = 2
MARKER = "generated.json"


def _read_marker(marker: Path) -> object:
    """The marker's parameters; None (regenerate) when it is absent or not valid JSON."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, waves: int = 3) -> np.ndarray:
    """A random colourful pattern as a function of object coordinates (moves with the object)."""
    out = np.zeros((*u.shape, 3), dtype=np.float32)
    for _ in range(waves):
        fu, fv = rng.uniform(0.2, 0.9, size=2) * rng.choice([-1, 1], size=2)
        phase = rng.uniform(0, 2 * math.pi)
        colour = rng.uniform(-1, 1, size=3).astype(np.float32)
        out += np.sin(fu * u + fv * v + phase)[..., None] * colour
    return out


def _wrap(d: np.ndarray, size: int) -> np.ndarray:
    """Offsets on a torus: an object leaving one side re-enters on the other."""
    return (d + size / 2) % size - size / 2


def render_video(cls: int, seed: int, frames: int = 36, size: int = 64) -> np.ndarray:
    """Render one video of class ``cls`` as ``uint8 (frames, size, size, 3)``.

    Translations run at 1.5-2.5 px per frame on a torus (the object wraps around the frame edges),
    so a 12-frame GOP moves it by 17-27 px and every position is equally likely in every class;
    rotations turn by 8-12 degrees per frame about the object's centre; zooms scale it geometrically
    between 0.5 and 1.7 of its size over the video.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg_rng = np.random.default_rng(rng.integers(1 << 31))
    background = 128 + 45 * _texture(bg_rng, xx / 2, yy / 2, waves=4) + rng.uniform(-30, 30, size=3)
    tex_seed = int(rng.integers(1 << 31))
    base = rng.uniform(60, 200, size=3).astype(np.float32)
    half = rng.uniform(0.14, 0.2) * size  # half side of the object
    shape = int(rng.integers(3))  # 0 square, 1 disc, 2 diamond
    angle0 = rng.uniform(0, 2 * math.pi)
    name = CLASSES[cls]
    cx0, cy0 = rng.uniform(0, size, size=2)
    speed = rng.uniform(1.5, 2.5)
    dx = {"move_right": speed, "move_left": -speed}.get(name, 0.0)
    dy = {"move_down": speed, "move_up": -speed}.get(name, 0.0)
    # Image y grows downwards, so a positive angle turns clockwise on screen.
    spin = math.radians(rng.uniform(8, 12)) * {"rotate_cw": 1, "rotate_ccw": -1}.get(name, 0)
    zoom = {"zoom_in": 1, "zoom_out": -1}.get(name, 0)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        px = _wrap(xx - (cx0 + dx * t), size)
        py = _wrap(yy - (cy0 + dy * t), size)
        ang = angle0 + spin * t
        progress = t / (frames - 1) if zoom > 0 else 1 - t / (frames - 1)
        scale = 1.0 if zoom == 0 else 0.5 * 3.4**progress
        c, s = math.cos(-ang), math.sin(-ang)
        u = (c * px - s * py) / scale
        v = (s * px + c * py) / scale
        if shape == 0:
            inside = np.maximum(np.abs(u), np.abs(v)) <= half
        elif shape == 1:
            inside = u * u + v * v <= half * half
        else:
            inside = np.abs(u) + np.abs(v) <= half * 1.3
        # A fixed-seed texture so the object's appearance is the same in every frame.
        tex = base + 70 * _texture(np.random.default_rng(tex_seed), u, v)
        frame = np.where(inside[..., None], tex, background)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def generate(
    root: str | Path,
    videos_per_class: dict[str, int] | None = None,
    frames: int = 36,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the data set under ``root/videos/<split>/<class>/`` unless an identical copy exists.

    Returns the videos directory. The marker file is written before the first video (saying the
    generation is under way) and again, with the generation parameters, after the last one, so an
    interrupted generation is redone and a parameter change regenerates. Only a ``videos`` folder
    with a marker beside it is ever deleted: a non-empty one without it holds someone else's files,
    and is refused with a :class:`~brisk.errors.UserError`.
    """
    root = Path(root)
    videos_per_class = dict(videos_per_class or {"train": 16, "test": 6})
    params = {
        "version": GENERATOR_VERSION,
        "videos_per_class": videos_per_class,
        "frames": frames,
        "size": size,
        "seed": seed,
        "classes": list(CLASSES),
    }
    videos = root / "videos"
    marker = root / MARKER
    if _read_marker(marker) == params:
        return videos
    if videos.exists():
        if not marker.is_file() and (not videos.is_dir() or any(videos.iterdir())):
            raise UserError(
                f"dataset.root={root}: {videos} holds files that moving_shapes did not generate "
                f"(no {MARKER} beside it), and brisk deletes only what it wrote; point "
                "dataset.root (or paths.data_dir) at an empty or new folder"
            )
        shutil.rmtree(videos)
    root.mkdir(parents=True, exist_ok=True)
    # claims the folder before the first video, so an interrupted generation is ours to redo
    marker.write_text(json.dumps({"generating": params}, indent=1))
    total = sum(videos_per_class.values()) * len(CLASSES)
    with TaskProgress(total, "generating videos", "video", sys.stderr) as bar:
        for split_no, (split, count) in enumerate(sorted(videos_per_class.items())):
            for cls, name in enumerate(CLASSES):
                for i in range(count):
                    video_seed = seed * 1_000_003 + split_no * 10_007 + cls * 1009 + i
                    pixels = render_video(cls, video_seed, frames, size)
                    path = videos / split / name / f"{name}_{i:03d}.avi"
                    write_video(path, pixels, gop_size=30)
                    bar.update()
    marker.write_text(json.dumps(params, indent=1))
    return videos
