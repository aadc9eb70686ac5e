"""Bad data, for every reader: each input either works (and reads exactly the right images and labels) or
fails with one line naming the file and the fix, a non-zero exit and no traceback, leaving no file in the
cache; never a silently wrong label. The corpus is written by the tests (bad_corpus.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bad_corpus import (
    AFFECTNET_HEADER, FER2013_HEADER, GOOD, GREYS, IMAGE_CASES, KITS, SIZE, cli_error, expected, fer2013_line,
    fer2013_lines, ferplus_votes, good_items, grey_png, loop_link, no_files, read_back, summary_argv,
)
from robustfer.cli import main
from robustfer.data import load_dataset
from robustfer.data.base import FERData
from robustfer.data.noise import read_noise_csv
from robustfer.errors import RobustferError

IMAGE_READERS = ("ferplus", "rafdb", "affectnet", "folder")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own decoded-image cache ($ROBUSTFER_CACHE, as the CLI uses it)."""
    c = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTFER_CACHE", str(c))
    return c


def fails(capsys, dataset: str, root: Path, cache: Path, *needles) -> str:
    """`data summary` on the bad data set fails in one line holding every needle, and adds no file to the
    cache; the same load through the Python API raises a one-line RobustferError."""
    before = cache_files(cache)
    line = cli_error(capsys, summary_argv(dataset, root))
    for n in needles:
        assert str(n) in line, line
    with pytest.raises(RobustferError) as e:
        load_dataset(dataset, root, "train", size=SIZE)
    assert "\n" not in str(e.value)
    assert cache_files(cache) == before
    return line


def cache_files(cache: Path) -> set[Path]:
    return {p for p in cache.rglob("*") if not p.is_dir()} if cache.exists() else set()


# ------------------------------------------------------------------ image files, every reader with images

@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
@pytest.mark.parametrize("reader", IMAGE_READERS)
def test_image_file(reader, case, tmp_path, cache, capsys):
    kit = KITS[reader]
    items = good_items()
    items[1] = (items[1][0], case.make(GREYS[1]))
    root = tmp_path / "data"
    rels = kit.write(root, items)
    want = case.reads(GREYS[1])
    if want is None:
        line = fails(capsys, reader, root, cache, root / rels[1], case.needle)
        fix = "remove its row from" if reader != "folder" else "delete it"
        assert fix in line
    else:
        got = read_back(kit.load(root))
        assert got == expected(rels, items, [GREYS[0], want, *GREYS[2:]])
        assert cache.exists() and not list(cache.glob("*.tmp*")) and not list(cache.glob("*.build*"))


@pytest.mark.parametrize("reader", IMAGE_READERS)
def test_every_unreadable_image_is_counted(reader, tmp_path, cache, capsys):
    """A data set with several bad images names the first and counts the rest, so one run shows the size of
    the problem (every image is tried)."""
    kit = KITS[reader]
    items = good_items()
    for i in (0, 2, 3):
        items[i] = (items[i][0], b"")
    root = tmp_path / "data"
    rels = kit.write(root, items)
    line = fails(capsys, reader, root, cache, root / rels[0], "2 more unreadable images")


@pytest.mark.parametrize("reader", IMAGE_READERS)
def test_bomb_limit_is_pillows_own(reader, tmp_path, cache, monkeypatch):
    """The reader honours Image.MAX_IMAGE_PIXELS as set in the process: an ordinary 48x48 image is refused
    when the limit is lowered below its size, and read again once it is restored."""
    from PIL import Image

    root = tmp_path / "data"
    rels = KITS[reader].write(root, good_items())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE - 1)
    with pytest.raises(RobustferError, match="decompression-bomb limit of 2303 pixels"):
        KITS[reader].load(root)
    assert no_files(cache)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE)
    assert read_back(KITS[reader].load(root)) == expected(rels, good_items())


# ------------------------------------------------------------------ paths: spaces, non-ASCII, symlinks, missing

NAMES = {  # image names with spaces and non-ASCII letters, where the layout allows them
    "ferplus": lambda i: f"fér {i} 表情.png",
    "rafdb": lambda i: f"train_é{i:04d}表情.jpg",  # the label file splits on spaces: none in RAF-DB names
    "affectnet": lambda i: f"10 {i}/fête {i} 表情.jpg",
    "folder": lambda i: f"fête {i} 表情.png",
}


@pytest.mark.parametrize("reader", IMAGE_READERS)
def test_spaces_and_non_ascii_in_root_and_names(reader, tmp_path, cache):
    root = tmp_path / "my data" / "dätä 表情"
    names = [NAMES[reader](i) for i in range(4)]
    rels = KITS[reader].write(root, good_items(), names)
    assert read_back(KITS[reader].load(root)) == expected(rels, good_items())


@pytest.mark.parametrize("reader", IMAGE_READERS)
@pytest.mark.parametrize("link", ["loop", "broken"])
def test_symlinked_image(reader, link, tmp_path, cache, capsys):
    root = tmp_path / "data"
    rels = KITS[reader].write(root, good_items())
    bad = root / rels[1]
    if link == "loop":
        loop_link(bad)
    else:
        bad.unlink()
        os.symlink(tmp_path / "nowhere.png", bad)
    needle = {"loop": "symbolic links", "broken": "broken symlink"}[link]
    if reader == "folder" and link == "loop":
        needle = "broken symlink"  # the folder reader finds it while listing the class folder
    fails(capsys, reader, root, cache, bad, needle)


def test_symlinked_class_folder_loop(tmp_path, cache, capsys):
    root = tmp_path / "data"
    KITS["folder"].write(root, good_items())
    loop_link(root / "train" / "anger")
    fails(capsys, "folder", root, cache, root / "train" / "anger", "broken symlink")


def test_symlink_to_a_real_image_works(tmp_path, cache):
    root = tmp_path / "data"
    items = good_items()
    rels = KITS["folder"].write(root, items)
    target = tmp_path / "elsewhere.png"
    target.write_bytes(grey_png(GREYS[1]))
    (root / rels[1]).unlink()
    os.symlink(target, root / rels[1])
    assert read_back(KITS["folder"].load(root)) == expected(rels, items)


@pytest.mark.parametrize("reader", ["ferplus", "rafdb", "affectnet"])
def test_missing_referenced_image(reader, tmp_path, cache, capsys):
    root = tmp_path / "data"
    rels = KITS[reader].write(root, good_items())
    (root / rels[2]).unlink()
    fails(capsys, reader, root, cache, root / rels[2], "missing image", "remove its row")


@pytest.mark.parametrize("reader", IMAGE_READERS + ("fer2013",))
def test_root_is_a_symlink_loop(reader, tmp_path, cache, capsys):
    root = tmp_path / "data"
    loop_link(root)
    line = cli_error(capsys, summary_argv(reader, root))
    assert f"data root {root} " in line and "pass --root" in line, line


@pytest.mark.parametrize("reader", ["ferplus", "rafdb", "affectnet"])
def test_label_file_is_a_symlink_loop(reader, tmp_path, cache, capsys):
    root = tmp_path / "data"
    KITS[reader].write(root, good_items())
    label = KITS[reader].label_file(root)
    loop_link(label)
    fails(capsys, reader, root, cache, label, "--root")


# ------------------------------------------------------------------ label files: ferplus, rafdb, affectnet

def _lines(reader, items=None, names=None):
    items = items or good_items()
    return KITS[reader].lines(items, names or [KITS[reader].names(i) for i in range(len(items))])


def _as_bytes(lines: list[str], sep="\n", encoding="utf-8") -> bytes:
    return (sep.join(lines) + sep).encode(encoding)


# Encodings and line ends, same for the three label files: (id, bytes from lines, error needle or None)
ENCODINGS = [
    ("crlf", lambda ls: _as_bytes(ls, "\r\n"), None),
    ("cr-only", lambda ls: _as_bytes(ls, "\r"), None),
    ("utf-8-bom", lambda ls: b"\xef\xbb\xbf" + _as_bytes(ls), None),
    ("utf-8-bom-crlf", lambda ls: b"\xef\xbb\xbf" + _as_bytes(ls, "\r\n"), None),
    ("utf-16-bom", lambda ls: _as_bytes(ls, encoding="utf-16"), None),
    ("utf-16-be-bom-crlf", lambda ls: b"\xfe\xff" + _as_bytes(ls, "\r\n", "utf-16-be"), None),
    ("blank-lines-and-trailing-spaces", lambda ls: ("\n\n" + "  \n".join(ls) + "\n\n\n").encode(), None),
    ("no-final-newline", lambda ls: "\n".join(ls).encode(), None),
    ("utf-16-no-bom", lambda ls: _as_bytes(ls, encoding="utf-16-le"), "NUL bytes"),
]


@pytest.mark.parametrize("enc", ENCODINGS, ids=[e[0] for e in ENCODINGS])
@pytest.mark.parametrize("reader", ["ferplus", "rafdb", "affectnet"])
def test_label_file_encodings(reader, enc, tmp_path, cache, capsys):
    _, make, needle = enc
    root = tmp_path / "data"
    items = good_items()
    rels = KITS[reader].write(root, items)
    label = KITS[reader].label_file(root)
    label.write_bytes(make(_lines(reader)))
    if needle is None:
        assert read_back(KITS[reader].load(root)) == expected(rels, items)
    else:
        fails(capsys, reader, root, cache, label, needle, "save it as UTF-8")


@pytest.mark.parametrize("reader", ["ferplus", "rafdb", "affectnet"])
def test_latin1_label_file_with_non_ascii_names(reader, tmp_path, cache, capsys):
    """A latin-1 file would give a wrong image name (mojibake); UTF-8 with the same names works."""
    root = tmp_path / "data"
    names = [NAMES[reader](i).replace("表情", "") for i in range(4)]
    rels = KITS[reader].write(root, good_items(), names)
    label = KITS[reader].label_file(root)
    assert read_back(KITS[reader].load(root)) == expected(rels, good_items())
    label.write_bytes(_as_bytes(_lines(reader, names=names), encoding="latin-1"))
    first = 1 + (reader == "affectnet")  # the header line comes first
    fails(capsys, reader, root, cache, label, f"not utf-8 text (byte 0x{'ea' if reader == 'affectnet' else 'e9'} "
          f"on line {first})", "save it as UTF-8")


def test_latin1_without_non_ascii_is_plain_ascii(tmp_path, cache):
    root = tmp_path / "data"
    rels = KITS["rafdb"].write(root, good_items())
    KITS["rafdb"].label_file(root).write_bytes(_as_bytes(_lines("rafdb"), encoding="latin-1"))
    assert read_back(KITS["rafdb"].load(root)) == expected(rels, good_items())


@pytest.mark.parametrize("reader", ["ferplus", "rafdb", "affectnet"])
def test_exact_repeated_row_is_read_once_with_a_warning(reader, tmp_path, cache, capsys):
    root = tmp_path / "data"
    items = good_items()
    rels = KITS[reader].write(root, items)
    label = KITS[reader].label_file(root)
    lines = _lines(reader)
    label.write_text("\n".join(lines + [lines[-2], lines[-1], lines[-2]]) + "\n")
    assert read_back(KITS[reader].load(root)) == expected(rels, items)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {label}: 3 repeated row(s) read once")
    # the CLI succeeds, its JSON on stdout untouched by the warning
    assert main(summary_argv(reader, root)) == 0
    assert '"images": 4' in capsys.readouterr().out


@pytest.mark.parametrize("reader", ["ferplus", "rafdb", "affectnet"])
def test_conflicting_repeated_row_is_an_error(reader, tmp_path, cache, capsys):
    root = tmp_path / "data"
    items = good_items()
    KITS[reader].write(root, items)
    label = KITS[reader].label_file(root)
    lines = _lines(reader)
    other = _lines(reader, [(GOOD[0], b"")] * 4)  # every image labelled happiness
    label.write_text("\n".join(lines + [other[-1]]) + "\n")
    n = len(lines)
    fails(capsys, reader, root, cache, label, f"lines {n} and {n + 1} are conflicting rows", "delete the other")


# FERPlus label.csv (no header; image, "(x, y, w, h)", 10 votes): (id, edit of the row list, needle)
def _row(i, votes=None, name=None, box='"(0, 0, 48, 48)"'):
    votes = votes if votes is not None else ferplus_votes(GOOD[i])
    return f"{name or KITS['ferplus'].names(i)},{box}," + ",".join(map(str, votes))


FERPLUS_ROWS = [
    ("missing-column", lambda ls: ls[:2] + [_row(2)[: _row(2).rindex(",")]] + ls[3:], "line 3: expected 12 columns"),
    ("extra-column", lambda ls: ls[:2] + [_row(2) + ",0"] + ls[3:], "line 3: expected 12 columns"),
    ("box-and-name-swapped", lambda ls: ls[:1] + ['"(0, 0, 48, 48)",fer0000001.png,' + _row(1).split(",", 5)[-1]] + ls[2:],
     "line 2: column 2 is 'fer0000001.png', expected the face box"),
    ("header-added", lambda ls: ["image,box," + ",".join(f"v{i}" for i in range(10))] + ls, "line 1: column 2 is 'box', expected the face box"),
    ("vote-not-a-number", lambda ls: ls[:1] + [_row(1, ["x"] + ferplus_votes(GOOD[1])[1:])] + ls[2:], "line 2: vote columns must be numbers"),
    ("negative-vote", lambda ls: ls[:1] + [_row(1, [-1] + ferplus_votes(GOOD[1])[1:])] + ls[2:], "line 2: votes must be annotator counts >= 0"),
    ("nan-vote", lambda ls: ls[:1] + [_row(1, ["nan"] + ferplus_votes(GOOD[1])[1:])] + ls[2:], "line 2: vote columns must be numbers"),
    ("inf-vote", lambda ls: ls[:1] + [_row(1, ["inf"] + ferplus_votes(GOOD[1])[1:])] + ls[2:], "line 2: vote columns must be numbers"),
    ("huge-vote", lambda ls: ls[:1] + [_row(1, ["1e999"] + ferplus_votes(GOOD[1])[1:])] + ls[2:], "line 2: votes must be annotator counts"),
    ("absolute-image-path", lambda ls: ls[:3] + [_row(3, name="/etc/fer0000003.png")] + ls[4:], "line 4: image path '/etc/fer0000003.png' leaves"),
    ("dotdot-image-path", lambda ls: ls[:3] + [_row(3, name="../FER2013Test/fer0000003.png")] + ls[4:], "leaves the data set's folder"),
    ("empty-image-name", lambda ls: ls[:3] + [_row(3, name=" ")] + ls[4:], "line 4: the image name (column 1) is empty"),
    ("unclosed-quote", lambda ls: ls[:1] + [_row(1, box='"(0, 0, 48, 48)')] + ls[2:], "expected 12 columns"),
    ("empty-file", lambda ls: [], "has no rows"),
    ("only-blank-lines", lambda ls: ["", " ", ""], "has no rows"),
    ("every-row-unknown", lambda ls: [_row(i, [0] * 8 + [10, 0]) for i in range(4)], "no image of split 'train' has a majority label"),
    ("every-row-not-a-face", lambda ls: [_row(i, [0] * 9 + [10]) for i in range(4)], "no image of split 'train'"),
]


@pytest.mark.parametrize("case", FERPLUS_ROWS, ids=[c[0] for c in FERPLUS_ROWS])
def test_ferplus_bad_rows(case, tmp_path, cache, capsys):
    _, edit, needle = case
    root = tmp_path / "data"
    KITS["ferplus"].write(root, good_items())
    label = KITS["ferplus"].label_file(root)
    label.write_text("\n".join(edit(_lines("ferplus"))) + "\n")
    fails(capsys, "ferplus", root, cache, label, needle)


FERPLUS_OK = [
    # (id, votes of item 1, label read for item 1 or None = dropped by the majority rule)
    ("float-votes", [0, 7.0, 0, 1.0, 0, 0, 0, 0, 0, 0], "happiness"),
    ("spaces-around-votes", [" 0", "7 ", 0, 1, 0, 0, 0, 0, 0, 0], "happiness"),
    ("all-zero-votes", [0] * 10, None),
    ("tie-no-majority", [3, 3, 0, 0, 0, 0, 0, 0, 0, 0], None),
    ("single-votes-dropped", [1, 1, 1, 1, 1, 1, 1, 3, 0, 0], "contempt"),
]


@pytest.mark.parametrize("case", FERPLUS_OK, ids=[c[0] for c in FERPLUS_OK])
def test_ferplus_odd_votes_work(case, tmp_path, cache):
    _, votes, label = case
    root = tmp_path / "data"
    items = good_items()
    rels = KITS["ferplus"].write(root, items)
    lines = _lines("ferplus")
    lines[1] = _row(1, votes)
    KITS["ferplus"].label_file(root).write_text("\n".join(lines) + "\n")
    want = expected(rels, items)
    if label is None:
        del want[rels[1]]
    else:
        want[rels[1]] = (label, [GREYS[1]])
    assert read_back(KITS["ferplus"].load(root)) == want


# RAF-DB list_patition_label.txt ("train_00001.jpg 5"): (id, replacement of line 2, needle)
RAFDB_LINES = [
    ("class-id-0", "train_00002.jpg 0", "line 2: unknown class id 0"),
    ("class-id-8", "train_00002.jpg 8", "line 2: unknown class id 8"),
    ("class-id-negative", "train_00002.jpg -4", "line 2: unknown class id -4"),
    ("class-name", "train_00002.jpg sadness", "line 2: label 'sadness' is not a number"),
    ("class-id-float", "train_00002.jpg 5.0", "line 2: label '5.0' is not a number"),
    ("class-id-arabic-digit", "train_00002.jpg ٥", "is not a number"),
    ("class-id-underscore", "train_00002.jpg 0_5", "is not a number"),
    ("extra-column", "train_00002.jpg 5 1", "line 2: expected 'image label'"),
    ("missing-label", "train_00002.jpg", "line 2: expected 'image label'"),
    ("reordered-columns", "5 train_00002.jpg", "line 2: label 'train_00002.jpg' is not a number"),
    ("space-in-name", "train 00002.jpg 5", "line 2: expected 'image label'"),
    ("no-split-prefix", "val_00002.jpg 5", "line 2: image 'val_00002.jpg' starts with neither"),
]


@pytest.mark.parametrize("case", RAFDB_LINES, ids=[c[0] for c in RAFDB_LINES])
def test_rafdb_bad_lines(case, tmp_path, cache, capsys):
    _, line, needle = case
    root = tmp_path / "data"
    KITS["rafdb"].write(root, good_items())
    label = KITS["rafdb"].label_file(root)
    lines = _lines("rafdb")
    lines[1] = line
    label.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fails(capsys, "rafdb", root, cache, label, needle)


@pytest.mark.parametrize("text", ["", "\n\n", "test_0001.jpg 4\n"], ids=["empty", "blank", "only-test-rows"])
def test_rafdb_empty_train_split(text, tmp_path, cache, capsys):
    root = tmp_path / "data"
    KITS["rafdb"].write(root, good_items())
    label = KITS["rafdb"].label_file(root)
    label.write_text(text)
    fails(capsys, "rafdb", root, cache, label, "no train_* rows")


def test_rafdb_signs_and_padding_work(tmp_path, cache):
    root = tmp_path / "data"
    rels = KITS["rafdb"].write(root, good_items())
    lines = _lines("rafdb")
    name, label = lines[1].split()
    lines[1] = f"\t{name}\t +{label} "
    KITS["rafdb"].label_file(root).write_text("\n".join(lines) + "\n")
    assert read_back(KITS["rafdb"].load(root)) == expected(rels, good_items())


# AffectNet training.csv: columns are found by header name
def _reorder(lines, order):
    out = []
    for ln in lines:
        cells = ln.split(",")
        out.append(",".join(cells[i] for i in order))
    return out


AFFECTNET_OK = [
    ("reordered-columns", lambda ls: _reorder(ls, [6, 0, 8, 7, 5, 1, 2, 3, 4])),
    ("extra-column", lambda ls: [ls[0] + ",note"] + [ln + ",é ok" for ln in ls[1:]]),
    ("header-case-and-spaces", lambda ls: [" " + ls[0].upper().replace(",", " , ")] + ls[1:]),
    ("dropped-ids-8-9-10", lambda ls: ls + [f"9{i}/x.jpg,,,,,1;2,{i},0,0" for i in (8, 9, 10)]),
    ("quoted-cells", lambda ls: [ls[0]] + ['"' + ln.replace(",", '","') + '"' for ln in ls[1:]]),
]


@pytest.mark.parametrize("case", AFFECTNET_OK, ids=[c[0] for c in AFFECTNET_OK])
def test_affectnet_layout_variants_work(case, tmp_path, cache):
    _, edit = case
    root = tmp_path / "data"
    items = good_items()
    rels = KITS["affectnet"].write(root, items)
    KITS["affectnet"].label_file(root).write_text("\n".join(edit(_lines("affectnet"))) + "\n", encoding="utf-8")
    assert read_back(KITS["affectnet"].load(root)) == expected(rels, items)


AFFECTNET_BAD = [
    ("missing-column", lambda ls: _reorder(ls, [0, 1, 2, 3, 4, 5, 7, 8]), "line 1: expected the header", "lacks expression"),
    ("renamed-column", lambda ls: [ls[0].replace("expression", "label")] + ls[1:], "line 1", "lacks expression"),
    ("repeated-column", lambda ls: [ls[0].replace("valence", "expression")] + ls[1:], "line 1", "repeats expression"),
    ("no-header", lambda ls: ls[1:], "line 1: expected the header", "lacks"),
    ("row-missing-cell", lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0]] + ls[3:], "line 3: expected 9 columns", ""),
    ("row-extra-cell", lambda ls: ls[:2] + [ls[2] + ",0"] + ls[3:], "line 3: expected 9 columns", ""),
    ("class-id-11", lambda ls: ls + ["1/x.jpg,,,,,1;2,11,0,0"], "line 6: unknown class id 11", ""),
    ("class-id-negative", lambda ls: ls + ["1/x.jpg,,,,,1;2,-1,0,0"], "line 6: unknown class id -1", ""),
    ("class-name", lambda ls: ls + ["1/x.jpg,,,,,1;2,happy,0,0"], "line 6: expression 'happy' is not an integer", ""),
    ("class-id-float", lambda ls: ls + ["1/x.jpg,,,,,1;2,1.0,0,0"], "line 6: expression '1.0' is not an integer", ""),
    ("partial-box", lambda ls: ls + ["1/x.jpg,4,4,,,1;2,1,0,0"], "line 6: face box", "not numeric"),
    ("box-no-area", lambda ls: ls + ["1/x.jpg,4,4,0,8,1;2,1,0,0"], "line 6: face box", "no area"),
    ("box-nan", lambda ls: ls + ["1/x.jpg,4,4,nan,8,1;2,1,0,0"], "line 6: face box", "not numeric"),
    ("empty-path", lambda ls: ls + [",,,,,1;2,1,0,0"], "line 6: subDirectory_filePath is empty", ""),
    ("absolute-path", lambda ls: ls + ["/tmp/x.jpg,,,,,1;2,1,0,0"], "line 6: image path '/tmp/x.jpg' leaves", ""),
    ("dotdot-path", lambda ls: ls + ["101/../../x.jpg,,,,,1;2,1,0,0"], "line 6: image path", "leaves the data set's folder"),
    ("header-only", lambda ls: ls[:1], "no rows with expression 0..7", ""),
    ("only-dropped-ids", lambda ls: ls[:1] + ["1/x.jpg,,,,,1;2,10,0,0"], "no rows with expression 0..7", ""),
    ("empty-file", lambda ls: [], "line 1: expected the header", ""),
]


@pytest.mark.parametrize("case", AFFECTNET_BAD, ids=[c[0] for c in AFFECTNET_BAD])
def test_affectnet_bad_csv(case, tmp_path, cache, capsys):
    _, edit, needle, needle2 = case
    root = tmp_path / "data"
    KITS["affectnet"].write(root, good_items())
    label = KITS["affectnet"].label_file(root)
    label.write_text("\n".join(edit(_lines("affectnet"))) + "\n")
    fails(capsys, "affectnet", root, cache, label, needle, needle2)


def test_affectnet_face_box_is_cropped_in_any_column_order(tmp_path, cache):
    """Reordered columns are mapped by name, so the box still crops the face (a positional reader would
    take the landmarks for the expression)."""
    import numpy as np
    from PIL import Image

    from bad_corpus import encode

    root = tmp_path / "data"
    a = np.full((48, 64), 30, np.uint8)
    a[8:24, 16:40] = 210
    items = [("fear", encode(Image.fromarray(a)))]
    rels = KITS["affectnet"].write(root, items)
    KITS["affectnet"].label_file(root).write_text(
        "expression,face_height,subDirectory_filePath,face_width,face_y,face_x,arousal,valence,facial_landmarks\n"
        f"4,16,{KITS['affectnet'].names(0)},24,8,16,0,0,1;2\n")
    assert read_back(KITS["affectnet"].load(root)) == {rels[0]: ("fear", [210])}


# ------------------------------------------------------------------ fer2013.csv (pixels in the csv)

def _fer2013(tmp_path, lines, encoding="utf-8", sep="\n", prefix=b"") -> Path:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    (root / "fer2013.csv").write_bytes(prefix + (sep.join(lines) + sep).encode(encoding))
    return root


def _fer2013_expected(rows=tuple(zip(GOOD, GREYS))):
    return {f"fer2013.csv#{i}": (c, [g]) for i, (c, g) in enumerate(rows)}


FER2013_OK = [
    ("crlf", dict(sep="\r\n")),
    ("utf-8-bom", dict(prefix=b"\xef\xbb\xbf")),
    ("utf-16-bom", dict(encoding="utf-16")),
]


@pytest.mark.parametrize("case", FER2013_OK, ids=[c[0] for c in FER2013_OK])
def test_fer2013_encodings(case, tmp_path, cache):
    root = _fer2013(tmp_path, fer2013_lines(), **case[1])
    assert read_back(load_dataset("fer2013", root, "train")) == _fer2013_expected()


def test_fer2013_reordered_and_extra_columns(tmp_path, cache):
    """icml_face_data.csv's 'emotion, Usage, pixels' (reordered, spaces) and an extra column both work."""
    lines = ["emotion, Usage, pixels, source"] + [
        f"{ln.split(',')[0]}, {ln.split(',')[2]},{ln.split(',')[1]}, kaggle" for ln in fer2013_lines()[1:]]
    root = _fer2013(tmp_path, lines)
    assert read_back(load_dataset("fer2013", root, "train")) == _fer2013_expected()


def test_fer2013_duplicate_rows_are_separate_data_points(tmp_path, cache):
    """fer2013.csv's rows are its images (the real file holds duplicate faces): a repeated row is read as
    the next row, as the publisher's order and FERPlus's fer2013new.csv count them."""
    lines = fer2013_lines()
    root = _fer2013(tmp_path, lines + [lines[2]])
    rows = list(zip(GOOD, GREYS)) + [(GOOD[1], GREYS[1])]
    assert read_back(load_dataset("fer2013", root, "train")) == _fer2013_expected(rows)


FER2013_BAD = [
    ("missing-column", lambda ls: [",".join(ln.split(",")[:2]) for ls_ in [ls] for ln in ls_], "line 1", "lacks Usage"),
    ("renamed-column", lambda ls: ["label,pixels,Usage"] + ls[1:], "line 1", "lacks emotion"),
    ("no-header", lambda ls: ls[1:], "line 1: expected the header", ""),
    ("row-extra-cell", lambda ls: ls[:2] + [ls[2] + ",x"] + ls[3:], "line 3: expected 3 columns", ""),
    ("class-id-7", lambda ls: ls + [fer2013_line("anger", 1).replace("0,", "7,", 1)], "line 6: unknown class id 7", ""),
    ("class-id-negative", lambda ls: ls + [fer2013_line("anger", 1).replace("0,", "-1,", 1)], "line 6: unknown class id -1", ""),
    ("class-name", lambda ls: ls + [fer2013_line("anger", 1).replace("0,", "anger,", 1)], "line 6: emotion 'anger' is not an integer", ""),
    ("class-id-float", lambda ls: ls + [fer2013_line("anger", 1).replace("0,", "0.0,", 1)], "line 6: emotion '0.0' is not an integer", ""),
    ("unknown-usage", lambda ls: ls + [fer2013_line("anger", 1, "Validation")], "line 6: unknown Usage 'Validation'", ""),
    ("pixel-256", lambda ls: ls + [fer2013_line("anger", 256)], "line 6: pixel values must be 0..255", ""),
    ("pixel-negative", lambda ls: ls + [fer2013_line("anger", -1)], "line 6: pixel values must be 0..255", ""),
    ("pixel-float", lambda ls: ls + [fer2013_line("anger", 1).replace(" 1,", " 1.5,")], "line 6: pixels must be space-separated integers", ""),
    ("pixel-count", lambda ls: ls + [fer2013_line("anger", 1).replace(" 1 1,", " 1,")], "line 6: expected 2304 pixels", ""),
    ("pixels-empty", lambda ls: ls + ["0,,Training"], "line 6: expected 2304 pixels", ""),
    ("header-only", lambda ls: ls[:1], "no rows with the Usage of split 'train'", ""),
    ("no-training-rows", lambda ls: ls[:1] + [fer2013_line("anger", 1, "PublicTest")], "no rows with the Usage", ""),
    ("latin-1", lambda ls: ["emotion,pixels,Usage,note"] + [ln + ",café" for ln in ls[1:]], "not utf-8 text", "save it as UTF-8"),
    ("utf-16-no-bom", lambda ls: ls, "NUL bytes", ""),
]


@pytest.mark.parametrize("case", FER2013_BAD, ids=[c[0] for c in FER2013_BAD])
def test_fer2013_bad_csv(case, tmp_path, cache, capsys):
    cid, edit, needle, needle2 = case
    encoding = {"latin-1": "latin-1", "utf-16-no-bom": "utf-16-le"}.get(cid, "utf-8")
    root = _fer2013(tmp_path, edit(fer2013_lines()), encoding=encoding)
    fails(capsys, "fer2013", root, cache, root / "fer2013.csv", needle, needle2)


# ------------------------------------------------------------------ folder layout

def test_folder_odd_files_are_ignored_and_odd_names_work(tmp_path, cache):
    root = tmp_path / "data"
    items = good_items()
    rels = KITS["folder"].write(root, items)
    (root / "train" / "happiness" / "notes.txt").write_text("not an image")
    (root / "train" / "happiness" / "._img0.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
    (root / "train" / "happiness" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "__MACOSX" / "happiness").mkdir(parents=True)
    (root / "train" / "happiness" / "UPPER.PNG").write_bytes(grey_png(33))
    want = expected(rels, items)
    want["train/happiness/UPPER.PNG"] = ("happiness", [33])
    assert read_back(KITS["folder"].load(root)) == want


def test_folder_given_classes_refuse_an_unknown_class_name(tmp_path, cache, capsys):
    root = tmp_path / "data"
    KITS["folder"].write(root, good_items() + [("joy", grey_png(5))])
    with pytest.raises(RobustferError, match=r"class folder .*joy \('joy'\) is not one of the given classes"):
        KITS["folder"].load(root, classes="ferplus")
    assert no_files(cache)


def test_folder_aliases_map_to_the_given_list(tmp_path, cache):
    from robustfer.data.classes import FERPLUS

    root = tmp_path / "data"
    items = [("Happy", grey_png(1)), ("SAD", grey_png(2)), ("surprised", grey_png(3))]
    rels = KITS["folder"].write(root, items)
    data = KITS["folder"].load(root, classes="ferplus")
    assert data.classes == FERPLUS
    assert read_back(data) == {rels[0]: ("happiness", [1]), rels[1]: ("sadness", [2]), rels[2]: ("surprise", [3])}


@pytest.mark.parametrize("layout, needle", [
    ("empty-class-folders", "no .jpg/.jpeg/.png/.bmp images"),
    ("split-without-class-folders", "has no class sub-folders"),
    ("only-non-images", "no .jpg/.jpeg/.png/.bmp images"),
])
def test_folder_empty_split(layout, needle, tmp_path, cache, capsys):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "test" / "happy").mkdir(parents=True)
    (root / "test" / "happy" / "a.png").write_bytes(grey_png(9))
    if layout == "empty-class-folders":
        (root / "train" / "happy").mkdir()
    if layout == "only-non-images":
        (root / "train" / "happy").mkdir()
        (root / "train" / "happy" / "a.txt").write_text("x")
    fails(capsys, "folder", root, cache, root / "train", needle)


# ------------------------------------------------------------------ the noise file (csv) beside the readers

def _noise_data():
    from robustfer.data.classes import RAFDB

    labels = np.array([3, 4, 6, 0], np.int64)
    return FERData(name="rafdb", split="train", classes=RAFDB, images=np.zeros((4, 1, 2, 2), np.uint8),
                   labels=labels, files=[f"Image/aligned/train_{i:05d}_aligned.jpg" for i in range(4)])


NOISE_HEADER = "image,clean_label,noisy_label,flipped"
NOISE_ROWS = ["Image/aligned/train_00000_aligned.jpg,happiness,happiness,0",
              "Image/aligned/train_00001_aligned.jpg,sadness,neutral,1",
              "Image/aligned/train_00002_aligned.jpg,neutral,neutral,0",
              "Image/aligned/train_00003_aligned.jpg,surprise,fear,1"]

NOISE_OK = [
    ("plain", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS)),
    ("crlf-bom", lambda: b"\xef\xbb\xbf" + _as_bytes([NOISE_HEADER] + NOISE_ROWS, "\r\n")),
    ("reordered-rows-and-aliases", lambda: _as_bytes([NOISE_HEADER] + [r.replace(",sadness,", ",Sad,") for r in NOISE_ROWS[::-1]])),
    ("utf-16", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS, encoding="utf-16")),
]

NOISE_BAD = [
    ("renamed-column", lambda: _as_bytes(["image,clean,noisy,flipped"] + NOISE_ROWS), "line 1: header"),
    ("missing-column", lambda: _as_bytes(["image,clean_label,noisy_label"] + [r.rsplit(",", 1)[0] for r in NOISE_ROWS]), "line 1: header"),
    ("unknown-class-name", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS[:3] + [NOISE_ROWS[3].replace("fear", "joy")]), "line 5: unknown noisy_label 'joy'"),
    ("flipped-inconsistent", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS[:1] + [NOISE_ROWS[1][:-1] + "0"] + NOISE_ROWS[2:]), "line 3: flipped is 0"),
    ("flipped-not-0-1", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS[:1] + [NOISE_ROWS[1][:-1] + "yes"] + NOISE_ROWS[2:]), "line 3: flipped is 'yes'"),
    ("duplicate-row", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS + NOISE_ROWS[:1]), "line 6: image"),
    ("missing-row", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS[:3]), "1 of the 4 images"),
    ("clean-label-wrong", lambda: _as_bytes([NOISE_HEADER] + [NOISE_ROWS[0].replace("happiness,happiness,0", "anger,anger,0")] + NOISE_ROWS[1:]), "disagrees"),
    ("latin-1", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS[:3] + [NOISE_ROWS[3].replace("fear", "fé")], encoding="latin-1"),
     "not utf-8 text (byte 0xe9 on line 5)"),
    ("utf-16-no-bom", lambda: _as_bytes([NOISE_HEADER] + NOISE_ROWS, encoding="utf-16-le"), "NUL bytes"),
]


@pytest.mark.parametrize("case", NOISE_OK, ids=[c[0] for c in NOISE_OK])
def test_noise_file_variants_work(case, tmp_path):
    path = tmp_path / "n.csv"
    path.write_bytes(case[1]())
    d = read_noise_csv(path, _noise_data())
    assert d.clean_labels.tolist() == [3, 4, 6, 0] and d.labels.tolist() == [3, 6, 6, 1]
    assert d.flipped.tolist() == [False, True, False, True]


@pytest.mark.parametrize("case", NOISE_BAD, ids=[c[0] for c in NOISE_BAD])
def test_noise_file_bad(case, tmp_path):
    path = tmp_path / "n.csv"
    path.write_bytes(case[1]())
    with pytest.raises(RobustferError) as e:
        read_noise_csv(path, _noise_data())
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and case[2] in msg
    assert "robustfer noise" in msg or "save it as UTF-8" in msg


# ------------------------------------------------------------------ through `train`: no run folder, no cache

@pytest.mark.parametrize("reader", IMAGE_READERS + ("fer2013",))
def test_train_on_bad_data_leaves_no_run_folder(reader, tmp_path, cache, capsys):
    if reader == "fer2013":
        root = _fer2013(tmp_path, fer2013_lines() + [fer2013_line("anger", 300)])
        bad = root / "fer2013.csv"
    else:
        items = good_items()
        items[2] = (items[2][0], b"\x89PNG\r\n\x1a\n truncated")
        root = tmp_path / "data"
        bad = root / KITS[reader].write(root, items)[2]
    out = tmp_path / "run"
    line = cli_error(capsys, ["train", "--dataset", reader, "--root", str(root), "--out", str(out), "--epochs", "1",
                              "--quiet", "--device", "cpu"])
    assert str(bad) in line
    assert not out.exists() and no_files(cache)
