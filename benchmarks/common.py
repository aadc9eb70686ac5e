"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from robustfer.data import load_dataset
from robustfer.train import TrainConfig, train


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


def check_same_settings(out: Path, want: dict) -> None:
    """Refuse to skip or resume a run folder whose config.json differs from `want` (a stale cell)."""
    if not (out / "config.json").exists():
        return
    saved = json.loads((out / "config.json").read_text())
    diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if diff:
        sys.exit(f"{out} was trained with other settings (saved, asked): {diff}; choose another --out")


def run_cell(cfg: TrainConfig, want: dict, label: str, verbose: bool = False) -> dict:
    """Train one benchmark run unless its summary.json exists; resume it when a checkpoint was left behind."""
    out = Path(cfg.out)
    check_same_settings(out, want)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    resume = (out / "last.pt").exists()
    t0 = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {cfg.method:7s} {label}{' (resumed)' if resume else ''} ...", flush=True)
    summary = train(cfg, resume=resume, quiet=not verbose)
    print(f"    last acc {summary['last']['accuracy']:.4f}  mean-class {summary['last']['mean_class_accuracy']:.4f}"
          f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return summary
