"""Markdown table of finished run folders: last-epoch and last-5-epoch accuracy and mean-class accuracy.

Runs with the same folder name in different parents (the same cell under several seeds, e.g.
out/seed1/nla_sym00_lt50, out/seed2/nla_sym00_lt50) are pooled with --by-name: mean ± sample std over them.

    .venv/bin/python benchmarks/runs_table.py --by-name benchmarks/out/nla_init{,_seed2,_seed3}/{ce,nla}_sym{00,20}_lt50
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

FIGURES = (("last", "accuracy"), ("last", "mean_class_accuracy"), ("last5", "accuracy"), ("last5", "mean_class_accuracy"))
HEAD = ["acc last", "mean-class last", "acc last 5 epochs", "mean-class last 5 epochs"]


def figures(run: Path) -> list[float]:
    """The run's FIGURES in %, from summary.json."""
    path = run / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run} has not finished (or is not a run folder)")
    s = json.loads(path.read_text())
    return [100 * s[block][key] for block, key in FIGURES]


def rows(runs: list[Path], by_name: bool) -> list[list[str]]:
    """One row per run, or per folder name (mean ± std over its runs, with their count)."""
    if not by_name:
        return [[str(r), "1", *(f"{v:.2f}" for v in figures(r))] for r in runs]
    groups: dict[str, list[list[float]]] = {}
    for r in runs:
        groups.setdefault(r.name, []).append(figures(r))
    out = []
    for name, vals in groups.items():
        a = np.array(vals)
        sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
        out.append([name, str(len(a)), *(f"{m:.2f} ± {s:.2f}" for m, s in zip(a.mean(0), sd))])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with summary.json)")
    ap.add_argument("--by-name", action="store_true", help="pool runs with the same folder name: mean ± std")
    args = ap.parse_args(argv)
    try:
        body = rows(args.runs, args.by_name)
    except FileNotFoundError as e:
        sys.exit(str(e))
    print("| run | runs | " + " | ".join(HEAD) + " |\n|" + "---|" * (len(HEAD) + 2))
    for r in body:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
