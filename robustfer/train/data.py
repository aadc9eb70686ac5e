"""Training and evaluation splits as the trainer needs them: read, noisy labels applied, limited."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from robustfer.data import FERData, load_dataset
from robustfer.data.noise import apply_noise, read_noise_csv
from robustfer.train.config import TrainConfig, parse_noise


def load_splits(cfg: TrainConfig, channels: int | None = None) -> tuple[FERData, FERData]:
    """(train, eval) for a config, in this order: noise on the whole split (a noise file written for the
    full split still matches, and an image keeps its noisy label whatever is selected); --offset/--limit
    select images OFFSET..OFFSET+N (e.g. to pretrain on a part disjoint from a benchmark's); --imbalance
    draws its long-tailed subset from those images by CLEAN label, so noise and imbalance combine as in
    the NLA paper's setting and --limit never changes the realised factor."""
    kw = {"cache_dir": Path(cfg.cache_dir) if cfg.cache_dir else None}
    if cfg.dataset == "ferplus":
        kw["label_mode"] = cfg.label_mode
    train = load_dataset(cfg.dataset, cfg.root, cfg.train_split, **kw)
    evald = load_dataset(cfg.dataset, cfg.root, cfg.eval_split, **kw)
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
    if cfg.eval_limit:
        evald = evald.subset(np.arange(min(cfg.eval_limit, len(evald))))
    return train, evald


def with_labels(data: FERData, labels: np.ndarray) -> FERData:
    """A copy of `data` with other training labels."""
    return replace(data, labels=np.asarray(labels, np.int64))
