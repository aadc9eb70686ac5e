"""RAF-DB basic reader (the authors' layout): `EmoLabel/list_patition_label.txt` rows of
`train_00001.jpg 5` (ids 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral) and the
100x100 aligned faces at `Image/aligned/train_00001_aligned.jpg`. The split is the file name's prefix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustfer.data.base import FERData, Rows, parse_int, text_lines
from robustfer.data.cache import cached_array, decode_files, file_key
from robustfer.data.classes import RAFDB
from robustfer.errors import RobustferError

SPLITS = ("train", "test")
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # sic: the authors' spelling
IMAGE_DIR = Path("Image") / "aligned"


def read_label_file(path: Path) -> list[tuple[int, str, str, int]]:
    """Rows of list_patition_label.txt -> (line, split, image name, class index 0..6); an exact repeat of a
    line is read once (with a stderr line), the same image with another label is an error."""
    if not path.is_file():
        raise RobustferError(
            f"missing {path}: --root must be the RAF-DB basic folder holding EmoLabel/list_patition_label.txt "
            "and Image/aligned/, as the RAF-DB authors ship it")
    rows = []
    seen = Rows(path)
    for n, line in enumerate(text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise RobustferError(
                f"{path} line {n}: expected 'image label' (e.g. 'train_00001.jpg 5'), found {line.strip()!r}; "
                "use the label file the RAF-DB authors ship")
        name, label = parts
        label_id = parse_int(label)
        if label_id is None:
            raise RobustferError(f"{path} line {n}: label {label!r} is not a number 1..7; fix the line")
        if not 1 <= label_id <= len(RAFDB):
            raise RobustferError(
                f"{path} line {n}: unknown class id {label_id}; RAF-DB basic ids are 1..7 "
                f"({', '.join(RAFDB)}); fix the line")
        split = name.split("_", 1)[0]
        if split not in SPLITS:
            raise RobustferError(
                f"{path} line {n}: image {name!r} starts with neither 'train_' nor 'test_'; "
                "fix the line or remove it")
        if seen.add(name, label_id, n):
            rows.append((n, split, name, label_id - 1))
    seen.warn()
    return rows


def load_rafdb(root: Path, split: str = "train", size: int = 100, channels: int = 3,
               cache_dir: Path | None = None) -> FERData:
    """Read one RAF-DB basic split ('train' or 'test'); images decoded once and cached (see cache.py)."""
    if split not in SPLITS:
        raise RobustferError(f"unknown RAF-DB split {split!r}; use one of {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise RobustferError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    label_path = root / LABEL_FILE
    rows = [r for r in read_label_file(label_path) if r[1] == split]
    if not rows:
        raise RobustferError(f"{label_path}: no {split}_* rows; use the complete label file the RAF-DB authors ship")
    if not (root / IMAGE_DIR).is_dir():
        raise RobustferError(
            f"missing folder {root / IMAGE_DIR}: unzip the aligned faces (aligned.zip) into {root / 'Image'}")
    files = [(IMAGE_DIR / f"{Path(name).stem}_aligned.jpg").as_posix() for _, _, name, _ in rows]
    paths = [root / f for f in files]
    key = file_key(paths, f"rafdb|{split}|{size}|{channels}", content=[label_path])
    images = cached_array(key, f"rafdb-{split}", lambda: decode_files(paths, size, channels), cache_dir)
    return FERData(
        name="rafdb", split=split, classes=RAFDB, images=images,
        labels=np.asarray([r[3] for r in rows], dtype=np.int64), files=files,
    )
