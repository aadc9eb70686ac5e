"""FERPlus reader (Microsoft's layout): `FER2013Train|Valid|Test/label.csv` rows of
`image, "(x, y, w, h)", 10 votes` (8 emotions, unknown, not-a-face) beside the PNGs.

Label modes follow microsoft/FERPlus `src/ferplus.py` `_process_data` exactly: single votes are
dropped as outliers; `majority` keeps the top class if it has more than half of the remaining votes;
`probability`/`crossentropy` integrate the top classes until 75% of votes (at most 3); `multi_target`
keeps classes with at least 30% of the votes. Images whose processed argmax is unknown or not-a-face
are dropped, as in the reference reader. The raw 10 votes per kept image are kept in `votes`.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from robustfer.data.base import FERData, Rows, check_inside, csv_rows, parse_number
from robustfer.data.cache import cached_array, decode_files, file_key
from robustfer.data.classes import FERPLUS
from robustfer.errors import RobustferError

SPLITS = {"train": ("FER2013Train",), "valid": ("FER2013Valid",), "val": ("FER2013Valid",), "test": ("FER2013Test",),
          "trainvalid": ("FER2013Train", "FER2013Valid")}
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
VOTE_NAMES = FERPLUS + ("unknown", "not_face")


def process_votes(raw: list[float], mode: str) -> list[float]:
    """Microsoft's `_process_data`: 10 vote counts -> a 10-way distribution (unknown one-hot = drop)."""
    emotion_raw = list(raw)
    size = len(emotion_raw)
    unknown = [0.0] * size
    unknown[-2] = 1.0
    for i in range(size):  # a single vote is an outlier
        if emotion_raw[i] < 1.0 + sys.float_info.epsilon:
            emotion_raw[i] = 0.0
    total = sum(emotion_raw)
    emotion = [0.0] * size
    if mode == "majority":
        maxval = max(emotion_raw)
        if maxval > 0.5 * total:
            emotion[int(np.argmax(emotion_raw))] = maxval
        else:
            emotion = unknown
    elif mode in ("probability", "crossentropy"):
        sum_part, count, valid = 0.0, 0, True
        while sum_part < 0.75 * total and count < 3 and valid:
            maxval = max(emotion_raw)
            for i in range(size):
                if emotion_raw[i] == maxval:
                    emotion[i] = maxval
                    emotion_raw[i] = 0
                    sum_part += emotion[i]
                    count += 1
                    if i >= 8:  # unknown or not-a-face ties with the top votes
                        valid = False
                        if sum(emotion) > maxval:
                            emotion[i] = 0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * total or count > 3:
            emotion = unknown
    elif mode == "multi_target":
        for i in range(size):
            if emotion_raw[i] >= 0.3 * total:
                emotion[i] = emotion_raw[i]
        if sum(emotion) <= 0.5 * total:
            emotion = unknown
    else:
        raise RobustferError(f"unknown FERPlus label mode {mode!r}; use one of {', '.join(LABEL_MODES)}")
    s = sum(emotion)
    return [e / s for e in emotion]


BOX = re.compile(r"\(\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*\)")


def read_label_csv(path: Path, warn: bool = True) -> tuple[list[str], np.ndarray]:
    """Rows of one split's label.csv -> image names and an N x 10 vote array. Votes are annotator counts
    (finite, >= 0); an exact repeat of a row is read once (a stderr line when `warn`), the same image with
    other votes is an error."""
    if not path.is_file():
        raise RobustferError(
            f"missing {path}: --root must be the FERPlus folder holding FER2013Train/Valid/Test, each with "
            "its label.csv (made by microsoft/FERPlus generate_training_data.py)")
    names, votes = [], []
    rows = Rows(path)
    fix = "use the label.csv written by microsoft/FERPlus"
    for n, row in csv_rows(path):
        if len(row) != 12:
            raise RobustferError(
                f"{path} line {n}: expected 12 columns (image, face box, 10 votes), found {len(row)}; {fix}")
        name = row[0].strip()
        if not name:
            raise RobustferError(f"{path} line {n}: the image name (column 1) is empty; fix the line")
        check_inside(name, path, n)
        if not BOX.fullmatch(row[1].strip()):
            raise RobustferError(f"{path} line {n}: column 2 is {row[1]!r}, expected the face box \"(x, y, w, h)\" "
                                 f"after the image name; {fix}")
        v = [parse_number(c) for c in row[2:]]
        if None in v:
            raise RobustferError(f"{path} line {n}: vote columns must be numbers, got {row[2:]}")
        if not all(math.isfinite(x) and x >= 0 for x in v):
            raise RobustferError(f"{path} line {n}: votes must be annotator counts >= 0, got {row[2:]}; fix the line")
        if rows.add(name, v, n):
            names.append(name)
            votes.append(v)
    if warn:
        rows.warn()
    return names, np.asarray(votes, dtype=np.float32).reshape(-1, 10)


def load_ferplus(root: Path, split: str = "train", label_mode: str = "majority", size: int = 48,
                 channels: int = 1, cache_dir: Path | None = None) -> FERData:
    """Read one FERPlus split; images decoded once and cached (see cache.py)."""
    if split not in SPLITS:
        raise RobustferError(f"unknown FERPlus split {split!r}; use one of {', '.join(SPLITS)}")
    if label_mode not in LABEL_MODES:
        raise RobustferError(f"unknown FERPlus label mode {label_mode!r}; use one of {', '.join(LABEL_MODES)}")
    root = Path(root)
    files, all_votes, soft, label_files = [], [], [], []
    for folder in SPLITS[split]:
        label_path = root / folder / "label.csv"
        names, votes = read_label_csv(label_path)
        label_files.append(label_path)
        if not names:
            raise RobustferError(f"{label_path} has no rows: use the label.csv written by microsoft/FERPlus")
        for name, v in zip(names, votes):
            dist = process_votes(v.tolist(), label_mode)
            if int(np.argmax(dist)) < len(FERPLUS):  # not unknown or not-a-face
                d = np.asarray(dist[: len(FERPLUS)], dtype=np.float32)
                soft.append(d / d.sum())
                files.append(f"{folder}/{name}")
                all_votes.append(v)
    if not files:
        raise RobustferError(f"{', '.join(str(p) for p in label_files)}: no image of split {split!r} has a "
                             f"{label_mode} label (all are unknown or not-a-face); use another --label-mode")
    paths = [root / f for f in files]
    key = file_key(paths, f"ferplus|{split}|{size}|{channels}", content=label_files)
    images = cached_array(key, f"ferplus-{split}", lambda: decode_files(paths, size, channels), cache_dir)
    soft_arr = np.stack(soft) if soft else np.zeros((0, len(FERPLUS)), np.float32)
    return FERData(
        name="ferplus", split=split, classes=FERPLUS, images=images,
        labels=soft_arr.argmax(1).astype(np.int64), files=files,
        votes=np.stack(all_votes) if all_votes else np.zeros((0, 10), np.float32),
        soft=soft_arr, extra={"label_mode": label_mode},
    )
