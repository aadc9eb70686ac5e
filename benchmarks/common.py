"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""
from __future__ import annotations

import time

from robustfer.train import TrainConfig, train


def run_cell(cfg: TrainConfig, label: str, verbose: bool = False) -> dict:
    """Train one benchmark run through `train --auto-resume`: a finished run is returned as it is, an
    interrupted one continued, one trained with other settings refused (trainer.check_same_settings)."""
    t0 = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {cfg.method:7s} {label} ...", flush=True)
    summary = train(cfg, auto_resume=True, quiet=not verbose)
    print(f"    last acc {summary['last']['accuracy']:.4f}  mean-class {summary['last']['mean_class_accuracy']:.4f}"
          f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return summary
