"""`data summary`: images per split and class; for FERPlus also the annotator-vote statistics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustfer.data import load_dataset
from robustfer.data.ferplus import read_label_csv
from robustfer.data.ferplus import SPLITS as FERPLUS_SPLITS

DEFAULT_SPLITS = {"ferplus": ("train", "valid", "test"), "rafdb": ("train", "test"), "affectnet": ("train", "val"),
                  "fer2013": ("train", "val", "test"), "folder": ("train", "test")}


def vote_statistics(votes: np.ndarray, rows_in_file: int) -> dict:
    """Agreement among FERPlus's 10 annotators on the kept images, and how many rows the majority rule drops."""
    emo = votes[:, :8]
    total = votes.sum(1)
    top = emo.max(1)
    return {
        "rows_in_label_csv": rows_in_file,
        "dropped": rows_in_file - len(votes),
        "mean_votes_per_image": float(total.mean()),
        "mean_top_class_share": float(np.mean(top / total)),
        "unanimous_fraction": float(np.mean(top == total)),
        "two_plus_classes_with_2_votes": float(np.mean((emo >= 2).sum(1) >= 2)),
    }


def summarize_dataset(name: str, root: str | Path, splits: tuple[str, ...] | None = None, **kw) -> dict:
    """{split: {"images": N, "per_class": {class: n}, ["votes": {...}]}} for each split present."""
    out = {}
    for split in splits or DEFAULT_SPLITS[name]:
        d = load_dataset(name, root, split, **kw)
        entry = {"images": len(d), "per_class": dict(zip(d.classes, map(int, d.class_counts())))}
        if name == "ferplus":
            rows = sum(len(read_label_csv(Path(root) / f / "label.csv", warn=False)[0]) for f in FERPLUS_SPLITS[split])
            entry["votes"] = vote_statistics(d.votes, rows)
        out[split] = entry
    return out
