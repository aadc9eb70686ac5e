"""Synthetic label noise as the literature injects it (docs/methods.md section 7), and its csv file.

Every generator is pure numpy, seeded with `np.random.default_rng(seed)`, returns new int64 labels and
never "flips" a label onto its own class, so the flip mask is exactly `noisy != clean`. The noise file
(`image,clean_label,noisy_label,flipped`, labels as class names) keeps the truth and the mask on disk so
that runs are comparable and each method's noise detection can be scored (DNFER/NCCTFER `noise_or_not`).
"""
from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from robustfer.data.base import FERData, text_lines
from robustfer.data.classes import canonical_name
from robustfer.errors import RobustferError

KINDS = ("symmetric", "pair", "uneven")
HEADER = ("image", "clean_label", "noisy_label", "flipped")

# LA-Net `_add_class_dependent_noise`, translated by class name (its dict uses LA-Net's own indices).
# 'contempt' (FERPlus, AffectNet) is not in LA-Net's 7-class map: robustfer sends it to 'disgust', the
# class it is most often confused with (and the nearest negative-valence expression).
PAIR_MAP = {
    "anger": "disgust", "disgust": "anger", "fear": "surprise", "happiness": "neutral",
    "sadness": "neutral", "surprise": "anger", "neutral": "sadness", "contempt": "disgust",
}

# ReSup's uneven profile (purpleleaves007/FERDenoise RAFlabel/usnoise_train1.txt); contempt 0 for FERPlus.
USNOISE = {
    "fear": 0.5, "sadness": 0.4, "disgust": 0.3, "anger": 0.2, "surprise": 0.1,
    "happiness": 0.0, "neutral": 0.0, "contempt": 0.0,
}


def _check_rate(rate: float, what: str = "noise rate") -> float:
    """A rate must be a finite fraction in [0, 1]."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise RobustferError(f"{what} {rate!r} is not a number: pass a fraction in [0, 1], e.g. 0.2 for 20%") from None
    if not math.isfinite(r) or r < 0.0 or r > 1.0:
        raise RobustferError(f"{what} {rate!r} is outside [0, 1]: pass a fraction, e.g. 0.2 for 20%")
    return r


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels must be a 1-D integer array of indices in [0, num_classes)."""
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise RobustferError(f"labels must be a 1-D array of class indices, got shape {y.shape} dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise RobustferError(f"labels must lie in [0, {num_classes}), found {int(y.min())}..{int(y.max())}")
    return y


def _canonical_classes(classes: tuple[str, ...]) -> list[str]:
    return [canonical_name(c) for c in classes]


def _flip_to_others(y: np.ndarray, num_classes: int, per_label_rate: np.ndarray | float,
                    seed: int) -> np.ndarray:
    """Flip y[i] with probability per_label_rate[i] to a class drawn uniformly from the other C-1."""
    rng = np.random.default_rng(seed)
    u = rng.random(y.size)
    offset = rng.integers(1, max(num_classes, 2), size=y.size)  # (y + k) mod C, k in 1..C-1: never y itself
    flip = u < per_label_rate
    if flip.any() and num_classes < 2:
        raise RobustferError("label noise needs at least 2 classes: use rate 0 for a single-class data set")
    return np.where(flip, (y + offset) % max(num_classes, 1), y).astype(np.int64)


def symmetric_noise(labels: np.ndarray, num_classes: int, rate: float, seed: int) -> np.ndarray:
    """Symmetric noise: each label flips with probability `rate` to one of the OTHER C-1 classes, uniformly (SCN generate.py / LA-Net)."""
    r = _check_rate(rate)
    y = check_labels(labels, num_classes)
    return _flip_to_others(y, num_classes, r, seed)


def pair_noise(labels: np.ndarray, classes: tuple[str, ...], rate: float, seed: int) -> np.ndarray:
    """Class-dependent noise: each label flips with probability `rate` along LA-Net's map by NAME (contempt->disgust, robustfer's choice)."""
    r = _check_rate(rate)
    y = check_labels(labels, len(classes))
    names = _canonical_classes(classes)
    index = {c: i for i, c in enumerate(names)}
    target = np.empty(len(names), np.int64)
    for i, c in enumerate(names):
        if c not in PAIR_MAP:
            raise RobustferError(
                f"pair noise has no target for class {classes[i]!r} (it knows {', '.join(PAIR_MAP)}): "
                "use --type symmetric or uneven for this class list")
        if PAIR_MAP[c] not in index:
            raise RobustferError(
                f"pair noise maps {c!r} to {PAIR_MAP[c]!r}, which is not in the class list {', '.join(classes)}: "
                "use --type symmetric or uneven for this class list")
        target[i] = index[PAIR_MAP[c]]
    rng = np.random.default_rng(seed)
    flip = rng.random(y.size) < r
    return np.where(flip, target[y], y).astype(np.int64)


def uneven_rates(labels: np.ndarray, classes: tuple[str, ...], rates: dict[str, float] | None = None,
                 rate: float | None = None) -> np.ndarray:
    """Per-class flip rates (C,) of the uneven profile (ReSup's usnoise file by default), optionally rescaled to overall `rate`."""
    y = check_labels(labels, len(classes))
    names = _canonical_classes(classes)
    profile = USNOISE if rates is None else {canonical_name(k): v for k, v in rates.items()}
    unknown = [k for k in profile if k not in names and rates is not None]
    if unknown:
        raise RobustferError(
            f"uneven noise rates name unknown class {unknown[0]!r}: use names from {', '.join(classes)}")
    p = np.array([_check_rate(profile.get(c, 0.0), f"uneven noise rate for {c!r}") for c in names])
    if rate is None:
        return p
    r = _check_rate(rate)
    n = np.bincount(y, minlength=len(names)).astype(np.float64)
    total = n.sum()
    if r == 0.0 or total == 0:
        return np.zeros_like(p)
    # Solve sum_c n_c * min(1, s * p_c) = r * N for the scale s (piecewise linear, increasing in s).
    want = r * total
    active = [c for c in np.argsort(-p, kind="stable") if p[c] > 0 and n[c] > 0]
    reachable = n[active].sum()
    if want > reachable * (1 + 1e-12):
        raise RobustferError(
            f"uneven noise cannot reach an overall rate of {r:g}: only {reachable / total:.4f} of these labels "
            "belong to classes the profile flips; pass a lower --rate or other per-class rates")
    s = 1.0 / p[active[-1]]  # every active class clipped at 1
    for k in range(len(active)):  # the top k classes clipped at 1, the rest scaled
        rest = active[k:]
        s_k = (want - n[active[:k]].sum()) / (n[rest] * p[rest]).sum()
        if s_k * p[active[k]] <= 1.0:
            s = s_k
            break
    return np.minimum(1.0, s * p)


def uneven_noise(labels: np.ndarray, classes: tuple[str, ...], rates: dict[str, float] | None = None,
                 seed: int = 0, rate: float | None = None) -> np.ndarray:
    """Uneven noise: class c flips with its own rate to a uniform other class (ReSup usnoise_train1.txt profile by default).

    `rates` maps class names to flip rates (classes left out get 0); None = ReSup's profile (fear 0.5,
    sadness 0.4, disgust 0.3, anger 0.2, surprise 0.1, happiness/neutral/contempt 0). `rate`, when given,
    multiplies the profile by the one factor that makes the EXPECTED overall rate on these labels equal
    `rate` (each class clipped at 1); a rate the profile cannot reach is an error.
    """
    y = check_labels(labels, len(classes))
    per_class = uneven_rates(y, classes, rates, rate)
    return _flip_to_others(y, len(classes), per_class[y], seed)


def make_noise(labels: np.ndarray, classes: tuple[str, ...], kind: str, rate: float | None,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy labels and the bool flip mask for kind symmetric|pair|uneven (methods.md section 7).

    For 'uneven', `rate` rescales ReSup's profile to that expected overall rate; rate None keeps the profile.
    """
    if kind not in KINDS:
        raise RobustferError(f"unknown noise type {kind!r}: use one of {', '.join(KINDS)}")
    if rate is None and kind != "uneven":
        raise RobustferError(f"{kind} noise needs a rate: pass --rate as a fraction in [0, 1], e.g. 0.2")
    if rate is not None:
        rate = _check_rate(rate)
    y = check_labels(labels, len(classes))
    if kind == "symmetric":
        noisy = symmetric_noise(y, len(classes), rate, seed)
    elif kind == "pair":
        noisy = pair_noise(y, classes, rate, seed)
    else:
        noisy = uneven_noise(y, classes, None, seed, rate=rate)
    return noisy, noisy != y


def _truth(data: FERData) -> np.ndarray:
    """The data set's own labels: the kept clean labels if noise was already applied."""
    return np.asarray(data.clean_labels if data.clean_labels is not None else data.labels, np.int64)


def _with_noise(data: FERData, clean: np.ndarray, noisy: np.ndarray, info: dict) -> FERData:
    """Copy of `data` with noisy labels, the clean labels and the flip mask; soft targets follow the flips."""
    flipped = noisy != clean
    soft = data.soft
    if soft is not None and flipped.any():  # a flipped image's soft target would otherwise leak the truth
        soft = np.array(soft, copy=True)
        soft[flipped] = 0
        soft[flipped, noisy[flipped]] = 1
    extra = dict(data.extra)
    extra["noise"] = info
    return replace(data, labels=noisy.astype(np.int64), clean_labels=clean.astype(np.int64),
                   flipped=flipped, soft=soft, extra=extra)


def apply_noise(data: FERData, kind: str, rate: float | None, seed: int) -> FERData:
    """Copy of `data` with synthetic noise of `kind` at `rate` applied to its clean labels (make_noise)."""
    clean = _truth(data)
    noisy, _ = make_noise(clean, data.classes, kind, rate, seed)
    return _with_noise(data, clean, noisy, {"type": kind, "rate": rate, "seed": seed})


def write_noise_csv(path: str | Path, files: list[str], classes: tuple[str, ...], clean: np.ndarray,
                    noisy: np.ndarray) -> Path:
    """Write the interface's noise file `image,clean_label,noisy_label,flipped` atomically (temp file + os.replace)."""
    path = Path(path)
    clean = check_labels(clean, len(classes))
    noisy = check_labels(noisy, len(classes))
    if not (len(files) == len(clean) == len(noisy)):
        raise RobustferError(
            f"{path}: {len(files)} images but {len(clean)} clean and {len(noisy)} noisy labels; pass one of each per image")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(HEADER)
            for img, c, n in zip(files, clean, noisy):
                w.writerow((img, classes[c], classes[n], int(c != n)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _norm_path(p: str) -> str:
    """Compare image paths as posix paths ('./a\\b.png' == 'a/b.png')."""
    return PurePosixPath(p.strip().replace("\\", "/")).as_posix()


def read_noise_csv(path: str | Path, data: FERData) -> FERData:
    """Copy of `data` with the noise file's noisy labels, clean labels and flip mask, matched by image path."""
    path = Path(path)
    regen = "regenerate it with `robustfer noise` for this data set"
    if not path.is_file():
        raise RobustferError(f"noise file {path} does not exist: {regen} (--out {path})")
    names = _canonical_classes(data.classes)
    lookup = {c: i for i, c in enumerate(names)}
    where = {}
    for i, f in enumerate(data.files):
        key = _norm_path(f)
        if key in where:
            raise RobustferError(f"{data.name} {data.split}: image {f!r} appears twice, so {path} cannot be matched by path")
        where[key] = i
    truth = _truth(data)
    n = len(data.files)
    noisy = np.full(n, -1, np.int64)
    clean = np.full(n, -1, np.int64)
    mode = data.extra.get("label_mode")
    made_for = f"the file was made for another label mode or data set (this is {data.name} {data.split}" + (
        f", label mode {mode})" if mode else ")")

    def cls(name: str, line: int, col: str) -> int:
        c = canonical_name(name)
        if c not in lookup:
            raise RobustferError(
                f"{path} line {line}: unknown {col} {name!r}; expected one of {', '.join(data.classes)}: {regen}")
        return lookup[c]

    try:
        rows = csv.reader(text_lines(path))  # UTF-8 with or without BOM, UTF-16 with BOM; else one error line
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise RobustferError(
                f"{path} line 1: header {','.join(header or [])!r} should be {','.join(HEADER)}: {regen}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(HEADER):
                raise RobustferError(
                    f"{path} line {line}: {len(row)} columns, expected 4 ({','.join(HEADER)}): {regen}")
            img, c_name, n_name, fl = (x.strip() for x in row)
            c, nz = cls(c_name, line, "clean_label"), cls(n_name, line, "noisy_label")
            if fl not in ("0", "1"):
                raise RobustferError(f"{path} line {line}: flipped is {fl!r}, expected 0 or 1: {regen}")
            if (fl == "1") != (c != nz):
                raise RobustferError(
                    f"{path} line {line}: flipped is {fl} but clean_label {c_name!r} and noisy_label "
                    f"{n_name!r} {'differ' if c != nz else 'are equal'}; the file was edited or corrupted: {regen}")
            i = where.get(_norm_path(img))
            if i is None:
                raise RobustferError(
                    f"{path} line {line}: image {img!r} is not in {data.name} {data.split}; "
                    f"the file was made for another data set, split or --root: {regen}")
            if clean[i] >= 0:
                raise RobustferError(f"{path} line {line}: image {img!r} is listed twice: {regen}")
            if c != truth[i]:
                raise RobustferError(
                    f"{path} line {line}: clean_label {c_name!r} of {img!r} disagrees with the data set's "
                    f"label {data.classes[truth[i]]!r}; {made_for}: {regen}")
            clean[i], noisy[i] = c, nz
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RobustferError(f"{path}: cannot read the noise file ({e}): {regen}") from None
    missing = np.flatnonzero(clean < 0)
    if missing.size:
        raise RobustferError(
            f"{path}: {missing.size} of the {n} images of {data.name} {data.split} are missing from the file "
            f"(first: {data.files[missing[0]]!r}); {made_for}: {regen}")
    return _with_noise(data, clean, noisy, {"file": str(path)})


__all__ = ["KINDS", "PAIR_MAP", "USNOISE", "symmetric_noise", "pair_noise", "uneven_noise", "uneven_rates",
           "make_noise", "apply_noise", "write_noise_csv", "read_noise_csv"]
