"""AffectNet reader (the csv lists as shipped): `Manually_Annotated_file_lists/training.csv` and
`validation.csv`, images under `Manually_Annotated_Images/<subDirectory_filePath>`.

Expression ids 0..7 follow classes.AFFECTNET; 8 (none), 9 (uncertain) and 10 (no-face) are dropped, and
`num_classes=7` also drops contempt (7), as the 7-class papers do. The published test split is the
validation list, so 'test' reads validation.csv. The images are not face crops: each is cropped to its
face box (the whole image where the box is empty) before resizing.

Streaming: the csv (280k rows) is read row by row with the csv module, and the decoded crops are written
into a memory-mapped scratch .npy beside the cache, so building never holds the split in RAM; the cache
is then memory-mapped like every other reader's.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from robustfer.data.base import FERData, Rows, check_inside, csv_rows, header_columns, parse_int, parse_number
from robustfer.data.cache import cached_array, decode_all, decode_image, default_cache_dir, file_key
from robustfer.data.classes import AFFECTNET
from robustfer.errors import RobustferError

LISTS = Path("Manually_Annotated_file_lists")
SPLITS = {"train": "training.csv", "val": "validation.csv", "test": "validation.csv"}
IMAGE_DIRS = (Path("Manually_Annotated_Images"), Path("Manually_Annotated") / "Manually_Annotated_Images")
HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
          "expression", "valence", "arousal")
DROPPED = {8: "none", 9: "uncertain", 10: "no-face"}

Box = tuple[int, int, int, int]

def read_list(path: Path, num_classes: int) -> tuple[list[str], list[Box | None], list[int], str]:
    """Stream one csv list -> kept image paths, face boxes (None = whole image), labels, and a digest of
    the kept (path, box) pairs, which is what the decoded array depends on. Columns are found by the
    header's names (any order; extra columns ignored). An exact repeat of a row is read once (a stderr
    line), the same image with another box or label is an error."""
    if not path.is_file():
        raise RobustferError(
            f"missing {path}: --root must be the AffectNet folder holding Manually_Annotated_file_lists/"
            "training.csv and validation.csv and Manually_Annotated_Images/, as shipped")
    names, boxes, labels = [], [], []
    digest = hashlib.sha256()
    fix = "use the csv as AffectNet ships it"
    rows = csv_rows(path)
    col, width = header_columns(rows, path, HEADER, fix)
    seen = Rows(path)
    for n, row in rows:
        if len(row) != width:
            raise RobustferError(
                f"{path} line {n}: expected {width} columns like the header ({','.join(HEADER)}), found {len(row)}; {fix}")
        expr = parse_int(row[col["expression"]])
        if expr is None:
            raise RobustferError(
                f"{path} line {n}: expression {row[col['expression']]!r} is not an integer 0..10; fix the row")
        if not 0 <= expr <= max(DROPPED):
            raise RobustferError(
                f"{path} line {n}: unknown class id {expr}; AffectNet ids are 0..7 "
                f"({', '.join(AFFECTNET)}) and 8..10 (dropped); fix the row")
        name = row[col["subDirectory_filePath"]].strip()
        if not name:
            raise RobustferError(f"{path} line {n}: subDirectory_filePath is empty; fix the row")
        check_inside(name, path, n)
        if expr in DROPPED or expr >= num_classes:  # read as shipped, whatever its box holds
            seen.add(name, (None, expr), n)
            continue
        fields = [row[col[k]].strip() for k in ("face_x", "face_y", "face_width", "face_height")]
        box = None
        if any(fields):
            values = [parse_number(v) for v in fields]
            if None in values:
                raise RobustferError(f"{path} line {n}: face box {fields} is not numeric; fix the row or empty all four cells")
            box = tuple(int(round(v)) for v in values)
            if box[2] <= 0 or box[3] <= 0:
                raise RobustferError(f"{path} line {n}: face box {fields} has no area; fix the row or empty the box")
        if not seen.add(name, (box, expr), n):
            continue
        names.append(name)
        boxes.append(box)
        labels.append(expr)
        digest.update(f"{names[-1]}\0{box}\n".encode())
    seen.warn()
    return names, boxes, labels, digest.hexdigest()

def decode_crops(paths: list[Path], boxes: list[Box | None], size: int, channels: int, source: Path,
                 out: np.ndarray) -> np.ndarray:
    """Decode every crop into `out` (threads; every error counted, the first named: cache.decode_all)."""
    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, channels, boxes[i], source)

    decode_all(work, len(paths))
    return out

def load_affectnet(root: Path, split: str = "train", size: int = 112, channels: int = 3,
                   cache_dir: Path | None = None, num_classes: int = 8) -> FERData:
    """Read AffectNet's 'train' or 'val' list ('test' = 'val'), 8 or 7 classes; face crops cached once."""
    if split not in SPLITS:
        raise RobustferError(f"unknown AffectNet split {split!r}; use one of {', '.join(SPLITS)}")
    if num_classes not in (7, 8):
        raise RobustferError(f"AffectNet num_classes must be 8 or 7 (7 drops contempt), got {num_classes}")
    if channels not in (1, 3):
        raise RobustferError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    canon = "train" if split == "train" else "val"
    list_path = root / LISTS / SPLITS[split]
    names, boxes, labels, digest = read_list(list_path, num_classes)
    if not names:
        raise RobustferError(f"{list_path}: no rows with expression 0..{num_classes - 1}; use the csv as AffectNet ships it")
    image_dir = next((d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise RobustferError(
            f"missing folder {root / IMAGE_DIRS[0]}: unpack Manually_Annotated_Images into {root}")
    files = [(image_dir / name).as_posix() for name in names]
    paths = [root / f for f in files]
    key = file_key(paths, f"affectnet|{canon}|{size}|{channels}|{digest}")
    name = f"affectnet-{canon}"
    scratch = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{name}-{key}.build{os.getpid()}.npy"

    def build() -> np.ndarray:
        shape = (len(paths), channels, size, size)
        try:
            scratch.parent.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=shape)
        except OSError:  # unwritable cache folder: decode in memory (cached_array warns)
            out = np.empty(shape, dtype=np.uint8)
        return decode_crops(paths, boxes, size, channels, list_path, out)

    try:
        images = cached_array(key, name, build, cache_dir)
    finally:
        if scratch.exists():
            try:
                scratch.unlink()
            except OSError:
                pass
    return FERData(
        name="affectnet", split=split, classes=AFFECTNET[:num_classes], images=images,
        labels=np.asarray(labels, dtype=np.int64), files=files, extra={"num_classes": num_classes},
    )
