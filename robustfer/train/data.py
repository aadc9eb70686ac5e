"""Training and evaluation splits as the trainer needs them: read, noisy labels applied, limited."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from robustfer.data import FERData, load_dataset
from robustfer.data.noise import apply_noise, read_noise_csv
from robustfer.errors import RobustferError
from robustfer.train.config import TrainConfig, parse_noise


def holdout_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the seeded held-out part (round(fraction * n), at least 1) of n training images."""
    k = min(max(1, round(fraction * n)), n - 1)
    return np.sort(np.random.default_rng([seed, 2024]).permutation(n)[:k])


def load_splits(cfg: TrainConfig, channels: int | None = None) -> tuple[FERData, FERData | None, FERData]:
    """(train, select, eval) for a config. `select` is the split `best` is chosen on: another split of the
    data set, the seeded held-out part of train (`holdout`: removed from training, its labels the given,
    possibly noisy ones, as a user's own validation data would be), or None when the selection is on the
    eval split itself (`test`, on request only). In this order: noise on the whole split (a noise file written for the
    full split still matches, and an image keeps its noisy label whatever is selected); --offset/--limit
    select images OFFSET..OFFSET+N (e.g. to pretrain on a part disjoint from a benchmark's); --imbalance
    draws its long-tailed subset from those images by CLEAN label, so noise and imbalance combine as in
    the NLA paper's setting and --limit never changes the realised factor."""
    kw = {"cache_dir": Path(cfg.cache_dir) if cfg.cache_dir else None}
    # evaluation and selection always on FERPlus's majority-rule images and labels, whatever the training
    # label mode: the other modes keep other images (e.g. crossentropy 3,507 test images instead of 3,137), so
    # rows of one table would otherwise be scored on different test sets
    ekw = dict(kw)
    if cfg.dataset == "ferplus":
        kw["label_mode"] = cfg.label_mode
    train = load_dataset(cfg.dataset, cfg.root, cfg.train_split, **kw)
    evald = load_dataset(cfg.dataset, cfg.root, cfg.eval_split, **ekw)
    if cfg.noise_file:
        train = read_noise_csv(cfg.noise_file, train)
    elif cfg.noise:
        kind, rate, seed = parse_noise(cfg.noise)
        train = apply_noise(train, kind, rate, cfg.seed if seed is None else seed)
    if cfg.offset or cfg.limit:
        start = min(cfg.offset or 0, len(train))
        stop = min(start + cfg.limit, len(train)) if cfg.limit else len(train)
        train = train.subset(np.arange(start, stop))
    if cfg.imbalance:
        from robustfer.data.imbalance import long_tailed_indices

        train = train.subset(long_tailed_indices(train.labels if train.clean_labels is None else train.clean_labels,
                                                 train.num_classes, cfg.imbalance, cfg.seed))
    select = None
    if cfg.select_split == "holdout":
        if len(train) < 2:
            raise RobustferError(f"--select-split holdout needs at least 2 training images, found {len(train)}")
        hold = holdout_indices(len(train), cfg.holdout, cfg.seed)
        select = train.subset(hold)
        train = train.subset(np.setdiff1d(np.arange(len(train)), hold))
    elif cfg.select_split not in (None, "test", cfg.eval_split):
        select = load_dataset(cfg.dataset, cfg.root, cfg.select_split, **ekw)
    if cfg.eval_limit:
        evald = evald.subset(np.arange(min(cfg.eval_limit, len(evald))))
        if select is not None:
            select = select.subset(np.arange(min(cfg.eval_limit, len(select))))
    return train, select, evald


def with_labels(data: FERData, labels: np.ndarray) -> FERData:
    """A copy of `data` with other training labels."""
    return replace(data, labels=np.asarray(labels, np.int64))


def parse_fold(spec: str) -> tuple[int, int]:
    """'2/5' -> (2, 5): fold 2 (0-based) of 5."""
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise RobustferError(f"--fold {spec!r}: expected I/K, e.g. 0/3 (fold I of K, 0-based)") from None
    if not (k >= 2 and 0 <= i < k):
        raise RobustferError(f"--fold {spec!r}: need K >= 2 and 0 <= I < K")
    return i, k


def fold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """k seeded folds (sorted index arrays) covering 0..n-1 once each, sizes within one of each other."""
    perm = np.random.default_rng([seed, 4242]).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, k)]


def split_fold(train: FERData, spec: str, seed: int) -> tuple[FERData, FERData]:
    """(the other folds, fold I) of the training images: cross-fitting for out-of-sample probabilities."""
    i, k = parse_fold(spec)
    if len(train) < 2 * k:
        raise RobustferError(f"--fold {spec}: {len(train)} training images are too few for {k} folds")
    folds = fold_indices(len(train), k, seed)
    rest = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i]))
    return train.subset(rest), train.subset(folds[i])
