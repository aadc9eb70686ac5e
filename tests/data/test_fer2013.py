"""FER2013 reader on a generated Kaggle fer2013.csv (emotion,pixels,Usage; 2304 grey values a row)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import robustfer.data.fer2013 as fer2013
from robustfer.data import load_dataset
from robustfer.data.classes import FER2013
from robustfer.data.fer2013 import load_fer2013
from reader_checks import error, names

# (emotion id, Usage); row i's face is face(i)
ROWS = [(3, "Training"), (0, "Training"), (6, "PublicTest"), (3, "PrivateTest"), (5, "Training"), (1, "PrivateTest")]


def face(i: int) -> np.ndarray:
    return ((np.arange(48 * 48) * (i + 3) + 17 * i) % 256).astype(np.uint8).reshape(48, 48)


def line(emotion, pixels, usage) -> str:
    return f"{emotion},{' '.join(map(str, np.ravel(pixels)))},{usage}"


def write_csv(path: Path, rows=ROWS, extra: list[str] = ()) -> Path:
    lines = ["emotion,pixels,Usage"] + [line(e, face(i), u) for i, (e, u) in enumerate(rows)] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "fer2013").mkdir()
    write_csv(tmp_path / "fer2013" / "fer2013.csv")
    return tmp_path / "fer2013"


def test_train_split_labels_rows_and_pixels(root, tmp_path):
    data = load_fer2013(root, "train", cache_dir=tmp_path / "cache")
    assert (data.name, data.split, data.classes) == ("fer2013", "train", FER2013)
    assert names(data) == ["happiness", "anger", "surprise"]  # ids 3, 0, 5
    assert data.files == ["fer2013.csv#0", "fer2013.csv#1", "fer2013.csv#4"]
    assert data.images.shape == (3, 1, 48, 48) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    for img, i in zip(data.images, (0, 1, 4)):
        assert np.array_equal(img[0], face(i))


def test_val_is_public_test_and_test_is_private_test(root, tmp_path):
    val = load_dataset("fer2013", root, "val", cache_dir=tmp_path / "cache")
    test = load_fer2013(root, "test", cache_dir=tmp_path / "cache")
    assert names(val) == ["neutral"] and val.files == ["fer2013.csv#2"]
    assert names(test) == ["happiness", "disgust"] and test.files == ["fer2013.csv#3", "fer2013.csv#5"]
    assert np.array_equal(test.images[1, 0], face(5))


def test_colour_and_resize(tmp_path):
    (tmp_path / "d").mkdir()
    path = tmp_path / "d" / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + line(4, np.full(2304, 77), "Training") + "\n")
    data = load_fer2013(tmp_path / "d", "train", size=96, channels=3, cache_dir=tmp_path / "cache")
    assert data.images.shape == (1, 3, 96, 96) and (data.images == 77).all()
    assert names(data) == ["sadness"]
    full = load_fer2013(tmp_path / "d", "train", channels=3, cache_dir=tmp_path / "cache")
    assert full.images.shape == (1, 3, 48, 48)


def test_cache_is_reused(root, assert_cache_reused):
    assert_cache_reused(lambda c: load_fer2013(root, "train", cache_dir=c), fer2013, "decode_rows", "fer2013")


def test_cache_keyed_by_csv_content(root, tmp_path):
    cache = tmp_path / "cache"
    path = root / "fer2013.csv"
    load_fer2013(root, "train", cache_dir=cache)
    st = path.stat()
    text = path.read_text().splitlines()
    text[1], text[2] = line(3, face(1), "Training"), line(0, face(0), "Training")  # pixels swapped
    path.write_text("\n".join(text) + "\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the content hash can tell
    assert path.stat().st_size == st.st_size
    data = load_fer2013(root, "train", cache_dir=cache)
    assert np.array_equal(data.images[0, 0], face(1)) and np.array_equal(data.images[1, 0], face(0))


@pytest.mark.parametrize("bad, needle", [
    (line(3, np.zeros(2303, int), "Training"), "expected 2304 pixels"),
    (line(3, np.zeros(2305, int), "Training"), "expected 2304 pixels"),
    ("3," + "1 " * 2303 + "x,Training", "space-separated integers"),
    (line(3, np.full(2304, 256), "Training"), "0..255"),
    (line(7, face(0), "Training"), "unknown class id 7"),
    (line("happy", face(0), "Training"), "not an integer"),
    (line(3, face(0), "Validation"), "unknown Usage"),
    ("3,1 2 3", "expected 3 columns"),
])
def test_bad_rows_name_csv_and_line(root, tmp_path, bad, needle):
    path = write_csv(root / "fer2013.csv", extra=[bad])
    cache = tmp_path / "cache"
    msg = error(load_fer2013, root, "train", cache_dir=cache)
    assert str(path) in msg and f"line {len(ROWS) + 2}" in msg and needle in msg
    assert not cache.exists() or not list(cache.iterdir())


def test_missing_csv_bad_header_bad_split(root, tmp_path):
    msg = error(load_fer2013, tmp_path, "train", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "fer2013.csv") in msg and "--root" in msg
    assert "unknown FER2013 split" in error(load_fer2013, root, "valid", cache_dir=tmp_path / "cache")
    path = root / "fer2013.csv"
    path.write_text("label,pixels,usage\n" + line(3, face(0), "Training") + "\n")
    msg = error(load_fer2013, root, "train", cache_dir=tmp_path / "cache")
    assert str(path) in msg and "line 1" in msg and "header" in msg
