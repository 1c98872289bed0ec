"""Every split-file format, parsed from small fixture files written here."""

from __future__ import annotations

import pytest

from brisk.video.splits import (
    SplitFileError,
    folder_split,
    parse_hmdb51,
    parse_kinetics_csv,
    parse_ucf101,
)


def write(path, text: str, newline: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())


def ucf_fixture(d, newline="\n"):
    write(d / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n", newline)
    write(
        d / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n"
        "YoYo/v_YoYo_g10_c02.avi 3\n",
        newline,
    )
    write(
        d / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nHandstandPushups/v_HandStandPushups_g01_c01.avi\n",
        newline,
    )


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_ucf101_split_files(tmp_path, newline):
    ucf_fixture(tmp_path, newline)
    split = parse_ucf101(tmp_path, 1)
    assert split.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert split.train == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 1),
        ("YoYo/v_YoYo_g10_c02.avi", 2),
    ]
    # The label comes from the directory part, never from the (misspelt) file name.
    assert split.test == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("HandstandPushups/v_HandStandPushups_g01_c01.avi", 1),
    ]


def test_ucf101_bad_lines_name_file_and_line(tmp_path):
    ucf_fixture(tmp_path)
    write(tmp_path / "trainlist01.txt", "ApplyEyeMakeup/a.avi 1\nNoSuchClass/b.avi 4\n")
    with pytest.raises(SplitFileError, match=r"trainlist01.txt:2"):
        parse_ucf101(tmp_path, 1)
    write(tmp_path / "trainlist01.txt", "ApplyEyeMakeup/a.avi 3\n")
    with pytest.raises(SplitFileError, match="disagrees"):
        parse_ucf101(tmp_path, 1)
    write(tmp_path / "classInd.txt", "1 A\nB\n")
    with pytest.raises(SplitFileError, match=r"classInd.txt:2"):
        parse_ucf101(tmp_path, 1)


def test_hmdb51_tags_train_test_and_unused(tmp_path):
    write(tmp_path / "brush_hair_test_split1.txt", "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    write(tmp_path / "#weird_test_split1.txt", "#x&y.avi 2\n", "\r\n")
    write(tmp_path / "brush_hair_test_split2.txt", "a.avi 2\n")
    split = parse_hmdb51(tmp_path, 1)
    assert split.classes == ["#weird", "brush_hair"]
    assert split.train == [("brush_hair/a.avi", 1)]
    assert split.test == [("#weird/#x&y.avi", 0), ("brush_hair/b.avi", 1)]
    # Unused videos (tag 0) are in neither list, so they are never evaluated.
    assert all("c.avi" not in rel for rel, _ in split.train + split.test)
    assert parse_hmdb51(tmp_path, 2).test == [("brush_hair/a.avi", 0)]


def test_hmdb51_errors(tmp_path):
    with pytest.raises(SplitFileError, match="no '\\*_test_split1.txt'"):
        parse_hmdb51(tmp_path, 1)
    write(tmp_path / "run_test_split1.txt", "a.avi 7\n")
    with pytest.raises(SplitFileError, match=r"run_test_split1.txt:1"):
        parse_hmdb51(tmp_path, 1)


def test_kinetics_csv_with_quoted_labels_and_missing_label_column(tmp_path):
    write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        '"passing American football (in game)",-abc123,10,20,train,0\n'
        "abseiling,zzz,0,10,train,1\n",
    )
    clips = parse_kinetics_csv(tmp_path / "train.csv")
    assert [c.label for c in clips] == ["passing American football (in game)", "abseiling"]
    assert clips[0].filename_stem == "-abc123_000010_000020"
    write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nq,1,11,test\n")
    assert parse_kinetics_csv(tmp_path / "test.csv")[0].label is None
    write(tmp_path / "bad.csv", "name,start\nx,1\n")
    with pytest.raises(SplitFileError, match="bad.csv"):
        parse_kinetics_csv(tmp_path / "bad.csv")
    write(tmp_path / "bad2.csv", "label,youtube_id,time_start,time_end,split\na,b,one,2,train\n")
    with pytest.raises(SplitFileError, match="bad2.csv:2"):
        parse_kinetics_csv(tmp_path / "bad2.csv")


def test_folder_split_is_fixed_by_seed_and_keeps_every_class(tmp_path):
    for cls, n in (("jump", 10), ("run", 3), ("solo", 1)):
        for i in range(n):
            write(tmp_path / cls / f"v{i}.mkv", "x")
    write(tmp_path / ".hidden" / "a.avi", "x")
    write(tmp_path / "run" / ".DS_Store", "x")
    a = folder_split(tmp_path, 0.3, seed=0)
    assert a == folder_split(tmp_path, 0.3, seed=0)
    assert a.classes == ["jump", "run", "solo"]
    assert sum(1 for _, y in a.test if y == 0) == 3
    assert sum(1 for _, y in a.test if y == 1) == 1
    assert [r for r, y in a.train if y == 2] == ["solo/v0.mkv"]
    assert not any(".DS_Store" in r for r, _ in a.train + a.test)
    assert folder_split(tmp_path, 0.3, seed=1).test != a.test or len(a.test) == 0
