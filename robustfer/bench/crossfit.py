"""cleanlab against the methods' own flags: `find_label_issues` on out-of-sample probabilities from K-fold
cross-fitted CE (the grid's crossfit cells, each writing RUN/heldout.npz), scored against the true flips."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from robustfer.bench.grid import Cell
from robustfer.evaluate import noise_detection

FIELDS = ["detector", "noise_type", "noise_rate", "seed", "sweep", "flagged_fraction", "noise_precision",
          "noise_recall", "f1"]


def f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None or p != p or r != r or p + r == 0:
        return None
    return 2 * p * r / (p + r)


def out_of_sample(paths: list[Path]) -> dict[str, np.ndarray]:
    """The folds' heldout.npz joined: files, given labels, probabilities, flip mask."""
    parts = [np.load(p) for p in paths]
    return {k: np.concatenate([d[k] for d in parts]) for k in ("files", "labels", "probs", "flipped")}


def cleanlab_flags(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's default label-issue filter (prune by noise rate) on out-of-sample probabilities."""
    from cleanlab.filter import find_label_issues

    return find_label_issues(labels=labels, pred_probs=probs, n_jobs=1)  # no forked workers (they can deadlock beside torch threads)


def detection_rows(out: Path, cells: list[Cell], method_rows: list[dict]) -> list[dict]:
    """One row per detector (cleanlab, each flagging method) x noise setting x seed; OUT/noise_detection.csv."""
    from robustfer.bench.collect import noise_parts

    rows = []
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        if c.role == "crossfit":
            groups.setdefault((c.noise, c.seed, tuple(c.sweep.items())), []).append(c)
    for (noise, seed, sweep), folds in groups.items():
        paths = [Path(c.config(out).out) / "heldout.npz" for c in folds]
        if not all(p.exists() for p in paths):
            continue
        d = out_of_sample(paths)
        flags = cleanlab_flags(d["labels"], d["probs"])
        s = noise_detection(flags, d["flipped"].astype(bool))
        kind, rate = noise_parts(noise)
        epochs = folds[0].options.get("epochs", "recipe")
        rows.append({"detector": f"cleanlab ({len(folds)}-fold CE, {epochs} epochs)", "noise_type": kind,
                     "noise_rate": rate, "seed": seed, "sweep": " ".join(f"{k}={v}" for k, v in sweep),
                     **s, "f1": f1(s["noise_precision"], s["noise_recall"])})
    for r in method_rows:
        if r.get("noise_precision") not in (None, ""):
            rows.append({"detector": r["method"], "noise_type": r["noise_type"], "noise_rate": r["noise_rate"],
                         "seed": r["seed"], "sweep": r["sweep"], "flagged_fraction": r["flagged_fraction"],
                         "noise_precision": r["noise_precision"], "noise_recall": r["noise_recall"],
                         "f1": f1(r["noise_precision"], r["noise_recall"])})
    if rows:
        with open(out / "noise_detection.csv", "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS, lineterminator="\n", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return rows


def detection_md(rows: list[dict]) -> list[str]:
    """Markdown: detectors x noise settings, 'precision / recall / F1' in % (mean over seeds)."""
    from robustfer.bench.collect import noise_label

    noises = list(dict.fromkeys(noise_label(r) for r in rows))
    dets = list(dict.fromkeys(r["detector"] for r in rows))
    lines = ["**Noise detection against the true flips: precision / recall / F1 % (last epoch; cleanlab on "
             "out-of-sample cross-fitted CE probabilities)**", "",
             "| detector | " + " | ".join(noises) + " |", "|---|" + "---:|" * len(noises)]
    for det in dets:
        parts = []
        for nz in noises:
            sel = [r for r in rows if r["detector"] == det and noise_label(r) == nz]
            if not sel:
                parts.append("-")
                continue
            mean = lambda k: np.mean([r[k] for r in sel if r[k] is not None]) * 100 if any(r[k] is not None for r in sel) else float("nan")  # noqa: E731
            parts.append(f"{mean('noise_precision'):.1f} / {mean('noise_recall'):.1f} / {mean('f1'):.1f}")
        lines.append(f"| {det} | " + " | ".join(parts) + " |")
    return lines + [""]
