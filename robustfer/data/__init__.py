"""Data readers, one per publisher layout, behind one `load_dataset` call."""
from __future__ import annotations

from pathlib import Path

from robustfer.data.base import FERData
from robustfer.data.classes import CANONICAL
from robustfer.errors import RobustferError

# name -> (module, loader function, default stored size, default channels)
READERS = {
    "ferplus": ("robustfer.data.ferplus", "load_ferplus", 48, 1),
    "rafdb": ("robustfer.data.rafdb", "load_rafdb", 100, 3),
    "affectnet": ("robustfer.data.affectnet", "load_affectnet", 112, 3),
    "fer2013": ("robustfer.data.fer2013", "load_fer2013", 48, 1),
    "folder": ("robustfer.data.folder", "load_folder", 48, 1),
}

# The publisher's validation split, where the data set has one (AffectNet's `val` is its test set).
VALID_SPLITS = {"ferplus": "valid", "fer2013": "val"}


def default_select_split(dataset: str) -> str:
    """The split `best` is chosen on: the data set's validation split, else a held-out part of train."""
    return VALID_SPLITS.get(dataset, "holdout")


def load_dataset(name: str, root: str | Path, split: str = "train", *, size: int | None = None,
                 channels: int | None = None, cache_dir: Path | None = None, **kw) -> FERData:
    """Read split `split` of data set `name` from its publisher's layout under `root`."""
    import importlib

    if name not in READERS:
        raise RobustferError(f"unknown data set {name!r}; use one of {', '.join(READERS)}")
    root = Path(root)
    if not root.is_dir():
        raise RobustferError(f"data root {root} does not exist: pass --root the {name} folder as its publisher ships it")
    module, fn, dsize, dchan = READERS[name]
    loader = getattr(importlib.import_module(module), fn)
    return loader(root, split, size=size or dsize, channels=channels or dchan, cache_dir=cache_dir, **kw)


__all__ = ["FERData", "default_select_split", "load_dataset", "READERS", "CANONICAL"]
