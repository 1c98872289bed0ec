"""Parsers for the official split files of UCF101, HMDB51 and Kinetics-400, and a folder split.

Each parser returns plain data (class names, ``(relative path or name, label)`` pairs) and raises
:class:`SplitFileError` naming the file and line when a file does not have the expected format, so
the data modules only deal with locating files on disk.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (
    ".avi",
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".gif",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
)


class SplitFileError(ValueError):
    """A split file exists but does not parse; the message names the file, line and format."""


@dataclass(frozen=True)
class Split:
    """Class names (index = label) and the labelled items of a train/test split."""

    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines with their 1-based numbers; Windows line endings and BOMs are tolerated."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def parse_ucf101(split_dir: str | Path, split: int) -> Split:
    """``classInd.txt`` + ``trainlist0N.txt`` / ``testlist0N.txt``; items are ``Class/video.avi``.

    The label of a test item comes from its directory part (file names misspell some classes, e.g.
    ``HandstandPushups/v_HandStandPushups_...``); a train line's own label must agree with it.
    """
    split_dir = Path(split_dir)
    class_ind = split_dir / "classInd.txt"
    classes_by_index: dict[int, str] = {}
    for no, line in _lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitFileError(
                f"{class_ind}:{no}: expected '<1-based index> <ClassName>', got {line!r}"
            )
        classes_by_index[int(parts[0])] = parts[1]
    if sorted(classes_by_index) != list(range(1, len(classes_by_index) + 1)):
        raise SplitFileError(f"{class_ind}: class indices are not 1..{len(classes_by_index)}")
    classes = [classes_by_index[i] for i in range(1, len(classes_by_index) + 1)]
    label_of = {name: i for i, name in enumerate(classes)}

    def read(kind: str) -> list[tuple[str, int]]:
        path = split_dir / f"{kind}list0{split}.txt"
        items = []
        for no, line in _lines(path):
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            cls = rel.split("/")[0] if "/" in rel else None
            if cls not in label_of or len(parts) > 2 or (kind == "test" and len(parts) != 1):
                raise SplitFileError(
                    f"{path}:{no}: expected '<Class>/<video>.avi"
                    f"{' <1-based label>' if kind == 'train' else ''}' "
                    f"with a class from classInd.txt, got {line!r}"
                )
            if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != label_of[cls]):
                raise SplitFileError(f"{path}:{no}: label {parts[1]} disagrees with class {cls!r}")
            items.append((rel, label_of[cls]))
        return items

    return Split(classes, read("train"), read("test"))


def parse_hmdb51(split_dir: str | Path, split: int) -> Split:
    """``<class>_test_splitN.txt`` files of ``<video>.avi <tag>`` lines: 1 train, 2 test, 0 unused.

    Classes are the sorted class names taken from the file names. Unused videos (tag 0) appear in
    neither list: they are never trained on nor evaluated. Items are ``<class>/<video>``.
    """
    split_dir = Path(split_dir)
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in split_dir.glob(f"*{suffix}"))
    if not files:
        raise SplitFileError(f"{split_dir}: no '*{suffix}' files")
    classes = sorted(p.name[: -len(suffix)] for p in files)
    train, test = [], []
    for label, cls in enumerate(classes):
        path = split_dir / f"{cls}{suffix}"
        for no, line in _lines(path):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise SplitFileError(f"{path}:{no}: expected '<video>.avi <0|1|2>', got {line!r}")
            item = (f"{cls}/{parts[0].strip()}", label)
            if parts[1] == "1":
                train.append(item)
            elif parts[1] == "2":
                test.append(item)
    return Split(classes, train, test)


@dataclass(frozen=True)
class KineticsClip:
    """One row of a Kinetics CSV; the file on disk is ``<youtube_id>_<start:06d>_<end:06d>.mp4``."""

    label: str | None
    youtube_id: str
    time_start: int
    time_end: int
    split: str

    @property
    def filename_stem(self) -> str:
        """The ActivityNet-crawler / torchvision file name, without extension."""
        return f"{self.youtube_id}_{self.time_start:06d}_{self.time_end:06d}"


def parse_kinetics_csv(path: str | Path) -> list[KineticsClip]:
    """A Kinetics annotation CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``).

    Labels contain spaces, commas and parentheses, hence a real CSV reader. The original test CSV
    has no ``label`` column; its clips get ``label=None``.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "time_start", "time_end", "split"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise SplitFileError(
                f"{path}: expected a header with label,youtube_id,time_start,time_end,split; "
                f"got {reader.fieldnames}"
            )
        clips = []
        for no, row in enumerate(reader, 2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError) as exc:
                raise SplitFileError(
                    f"{path}:{no}: time_start/time_end not numbers: {row}"
                ) from exc
            label = row.get("label")
            clips.append(KineticsClip(label, row["youtube_id"], start, end, row["split"]))
    return clips


def folder_split(root: str | Path, test_fraction: float = 0.3, seed: int = 0) -> Split:
    """``root/<class>/<video>`` (any extension, hidden files ignored): a fixed-seed split per class.

    Each class keeps at least one training video; with two or more videos it gets at least one test
    video. The split depends only on the sorted file names and the seed.
    """
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rng = random.Random(seed)
    train, test = [], []
    for label, cls in enumerate(classes):
        names = sorted(
            p.relative_to(root).as_posix()
            for p in (root / cls).rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        rng.shuffle(names)
        n_test = round(len(names) * test_fraction)
        n_test = min(max(n_test, 1 if len(names) >= 2 else 0), max(len(names) - 1, 0))
        test += [(n, label) for n in sorted(names[:n_test])]
        train += [(n, label) for n in sorted(names[n_test:])]
    return Split(classes, train, test)


def parse_label_list(path: str | Path) -> list[tuple[str, int]]:
    """An MMAction2 video list (``<path> <0-based label>`` per line, e.g.
    ``ucf101_train_split_1_videos.txt`` or ``kinetics400_val_list_videos.txt``).

    The path may contain spaces (the label is the last field). Used when users already prepared
    their data with MMAction2's tools, so they need not rebuild the official layout.
    """
    path = Path(path)
    items = []
    for no, line in _lines(path):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise SplitFileError(
                f"{path}:{no}: expected '<video path> <0-based label>', got {line!r}"
            )
        items.append((parts[0].replace("\\", "/"), int(parts[1])))
    return items


def classes_from_lists(*lists: list[tuple[str, int]], path: Path | str = "") -> list[str]:
    """Class names of MMAction2 lists: the directory part of each label's videos when every line has
    one and each label has a single directory; otherwise the label number itself."""
    labels = sorted({y for items in lists for _, y in items})
    if labels != list(range(len(labels))):
        raise SplitFileError(f"{path}: labels are not 0..{len(labels) - 1}")
    dirs: dict[int, set[str]] = {}
    for items in lists:
        for rel, y in items:
            dirs.setdefault(y, set()).add(rel.split("/")[0] if "/" in rel else "")
    if all(len(d) == 1 and "" not in d for d in dirs.values()):
        return [next(iter(dirs[y])) for y in labels]
    return [str(y) for y in labels]


_UCF_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)


def ucf101_group(rel: str) -> str | None:
    """``v_<Class>_gNN_cMM.avi`` -> ``<class dir>/gNN``: the clips of one group are cut from one
    long video, so a group must sit wholly on one side of a split."""
    m = _UCF_GROUP.search(Path(rel).name)
    return None if m is None else f"{rel.split('/')[0]}/g{int(m.group(1)):02d}"


def carve_validation(
    labels: list[int], groups: list[str | None], fraction: float, seed: int = 0
) -> list[int]:
    """Indices of the training items that become the validation set.

    Stratified per class: each class gives about ``fraction`` of its videos, chosen with ``seed``.
    Items with the same group key stay together (a ``None`` group is the item alone). A class keeps
    at least one group for training; with ``fraction > 0`` and two groups or more it gives at least
    one. The result depends only on the order-free content of the lists and the seed, not on the
    run's seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"dataset.val_fraction={fraction}: expected 0 <= val_fraction < 1")
    if fraction == 0.0:
        return []
    by_class: dict[int, dict[str, list[int]]] = {}
    for i, (y, g) in enumerate(zip(labels, groups, strict=True)):
        by_class.setdefault(y, {}).setdefault(g if g is not None else f"#{i}", []).append(i)
    rng = random.Random(seed)
    val: list[int] = []
    for y in sorted(by_class):
        keyed = by_class[y]
        names = sorted(keyed)
        rng.shuffle(names)
        total = sum(len(v) for v in keyed.values())
        target = fraction * total
        taken = 0
        for k, name in enumerate(names):
            if k == len(names) - 1:
                break  # the class keeps at least one group for training
            size = len(keyed[name])
            # take the group when that brings the count closer to the target (always the first one)
            if k > 0 and abs(taken + size - target) >= abs(taken - target):
                break
            val += keyed[name]
            taken += size
    return sorted(val)
