"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""
from __future__ import annotations

import sys
from pathlib import Path

from robustfer.data import load_dataset


def check_disjoint_init(init: str | None, root: Path, cache_dir: str | None, first: int | None) -> None:
    """Refuse an --init trained on any of the first `first` FERPlus training images (all if None), which
    the benchmark trains on, or on the test split. robustfer run folders record the images they trained
    on in train_images.txt; without that listing the check cannot be made and says so."""
    if init is None:
        return
    listing = Path(init).parent / "train_images.txt"
    if not listing.exists():
        print(f"note: {listing} not found; cannot check that --init never saw the benchmark's images", flush=True)
        return
    seen = set(listing.read_text().split())
    cache = Path(cache_dir) if cache_dir else None
    data, test = (load_dataset("ferplus", str(root), split, cache_dir=cache) for split in ("train", "test"))
    used = data.files[:first or len(data)]
    overlap = seen & set(used) | seen & set(test.files)
    if overlap:
        sys.exit(f"--init {init} was trained on {len(overlap)} of the benchmark's training or test images "
                 f"(e.g. {sorted(overlap)[0]}); pretrain with `robustfer train --offset {len(used)}`")
    print(f"--init {init}: trained on {len(seen)} images, none of them in the benchmark's {len(used)} "
          f"training images or the test split", flush=True)
