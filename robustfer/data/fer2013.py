"""FER2013 reader (Kaggle's `fer2013.csv`): header `emotion,pixels,Usage`, each row one 48x48 grey face as
2304 space-separated ints, emotion ids 0..6 = classes.FER2013. Usage Training / PublicTest / PrivateTest
gives the splits train / val / test. There are no image files: `files` holds `fer2013.csv#<row>`, the
0-based data row (the order FERPlus's fer2013new.csv follows). The decoded array is cached under a hash
of the csv's bytes.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from robustfer.data.base import FERData, csv_rows, header_columns, parse_int
from robustfer.data.cache import cached_array, file_key
from robustfer.data.classes import FER2013
from robustfer.errors import RobustferError

CSV_NAME = "fer2013.csv"
HEADER = ("emotion", "pixels", "Usage")
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS = tuple(USAGE.values())
SIDE = 48


def _rows(path: Path) -> Iterator[tuple[int, int, str, str, str]]:
    """Yield (line number, data row index, emotion, pixels, usage) for every row; columns are found by the
    header's names (any order, e.g. icml_face_data.csv's 'emotion, Usage, pixels'; extra columns ignored)."""
    rows = csv_rows(path)
    col, width = header_columns(rows, path, HEADER, "use the fer2013.csv Kaggle ships")
    for i, (n, row) in enumerate(rows):
        if len(row) != width:
            raise RobustferError(
                f"{path} line {n}: expected {width} columns like the header (emotion,pixels,Usage), found {len(row)}; "
                "use the fer2013.csv Kaggle ships")
        yield n, i, row[col["emotion"]].strip(), row[col["pixels"]], row[col["Usage"]].strip()


def read_labels(path: Path, split: str) -> tuple[list[int], list[int]]:
    """Data row indices and class indices of one split (pixels are left unparsed here)."""
    if not path.is_file():
        raise RobustferError(
            f"missing {path}: --root must be the folder holding Kaggle's fer2013.csv "
            "(challenges-in-representation-learning-facial-expression-recognition-challenge)")
    index, labels = [], []
    for n, i, emotion, _, usage in _rows(path):
        if usage not in USAGE:
            raise RobustferError(
                f"{path} line {n}: unknown Usage {usage!r}; expected one of {', '.join(USAGE)}; fix the row")
        e = parse_int(emotion)
        if e is None:
            raise RobustferError(f"{path} line {n}: emotion {emotion!r} is not an integer 0..6; fix the row")
        if not 0 <= e < len(FER2013):
            raise RobustferError(
                f"{path} line {n}: unknown class id {e}; FER2013 ids are 0..6 ({', '.join(FER2013)}); fix the row")
        if USAGE[usage] == split:
            index.append(i)
            labels.append(e)
    return index, labels


def parse_pixels(pixels: str, path: Path, line: int) -> np.ndarray:
    """One row's pixel string -> 48 x 48 uint8; a wrong count or a bad value names the csv line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # older numpy only warns on bad tokens
            arr = np.fromstring(pixels, dtype=np.int32, sep=" ")
    except (ValueError, DeprecationWarning):
        raise RobustferError(f"{path} line {line}: pixels must be space-separated integers 0..255; fix the row") from None
    if arr.size != SIDE * SIDE:
        raise RobustferError(
            f"{path} line {line}: expected {SIDE * SIDE} pixels (48x48), found {arr.size}; fix or remove the row")
    if arr.min() < 0 or arr.max() > 255:
        raise RobustferError(f"{path} line {line}: pixel values must be 0..255; fix the row")
    return arr.astype(np.uint8).reshape(SIDE, SIDE)


def decode_rows(path: Path, index: list[int], size: int, channels: int) -> np.ndarray:
    """Second pass over the csv: decode the pixel strings of rows `index` (ascending) into N x C x H x W."""
    out = np.empty((len(index), channels, size, size), dtype=np.uint8)
    j = 0
    for n, i, _, pixels, _ in _rows(path):
        if j == len(index):
            break
        if i != index[j]:
            continue
        grey = parse_pixels(pixels, path, n)
        if size != SIDE:
            grey = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))
        out[j] = grey[None]  # broadcasts to 3 identical channels, as PIL's L -> RGB does
        j += 1
    if j != len(index):
        raise RobustferError(f"{path} changed while it was read; load again")
    return out


def load_fer2013(root: Path, split: str = "train", size: int = 48, channels: int = 1,
                 cache_dir: Path | None = None) -> FERData:
    """Read one split of Kaggle's fer2013.csv ('train', 'val' = PublicTest, 'test' = PrivateTest), cached once."""
    if split not in SPLITS:
        raise RobustferError(f"unknown FER2013 split {split!r}; use one of {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise RobustferError(f"channels must be 1 or 3, got {channels}")
    path = Path(root) / CSV_NAME
    index, labels = read_labels(path, split)
    if not index:
        raise RobustferError(f"{path}: no rows with the Usage of split {split!r}; use the complete fer2013.csv")
    key = file_key([path], f"fer2013|{split}|{size}|{channels}", content=[path])
    images = cached_array(key, f"fer2013-{split}", lambda: decode_rows(path, index, size, channels), cache_dir)
    return FERData(
        name="fer2013", split=split, classes=FER2013, images=images,
        labels=np.asarray(labels, dtype=np.int64), files=[f"{CSV_NAME}#{i}" for i in index],
    )
