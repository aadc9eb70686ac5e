"""Where NLA's weight goes on a finished run's training set, per class (issue 5 diagnosis).

Rebuilds a run's training set from its config.json (same subset, same noisy labels), puts its last.pt
model through it without augmentation, and prints per given class: count, share predicted correctly,
and the mean weight w and CE factor 0.5(1 + w) NLA gives at the run's last epoch. Works on CE runs
too (the weight NLA WOULD give under that model), so the two can be compared on one subset.

    .venv/bin/python benchmarks/nla_weights_by_class.py benchmarks/out/nla_init/nla_sym00_lt50 benchmarks/out/nla_init/ce_sym00_lt50
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from robustfer.errors import RobustferError
from robustfer.evaluate import mean_by_class
from robustfer.methods import create_method
from robustfer.methods.base import State
from robustfer.models.predict import predict_logits
from robustfer.train import TrainConfig
from robustfer.train.checkpoint import load_checkpoint
from robustfer.train.trainer import Run


def class_table(run_dir: Path) -> dict[str, dict[str, float | int | None]]:
    """Per class of the run's training labels: n, correct, w, factor (NLA's weight under the run's last model)."""
    cfg = TrainConfig.load(run_dir / "config.json")
    run = Run(cfg, quiet=True)
    run.model.load_state_dict(load_checkpoint(run_dir / "last.pt")["model"])
    logits = predict_logits(run.model, run.images, run.spec.size, run.spec.channels, run.spec.norm)
    labels = run.labels
    nla = create_method("nla")  # the official weight (means, covariances, ramp)
    eps = nla.eps(State(epoch=run.cfg.epochs - 1, epochs=run.cfg.epochs, num_train=len(labels),
                        num_classes=run.train_data.num_classes))
    w = nla.weight(logits.softmax(1), labels, eps).cpu().numpy()
    y = labels.cpu().numpy()
    correct = (logits.argmax(1) == labels).float().cpu().numpy()
    classes = list(run.train_data.classes)
    cols = {"w": mean_by_class(w, y, classes), "factor": mean_by_class(0.5 * (1 + w), y, classes),
            "correct": mean_by_class(correct, y, classes)}
    counts = np.bincount(y, minlength=len(classes))
    return {c: {"n": int(counts[i]), **{k: cols[k][c] for k in cols}} for i, c in enumerate(classes)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (config.json + last.pt)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for r in args.runs:
        try:
            table = class_table(Path(r))
        except (RobustferError, FileNotFoundError) as e:
            sys.exit(f"{r}: {e}")
        print(f"\n{r}\n| class | train images | predicted correctly | mean w | mean CE factor 0.5(1+w) |\n|---|---|---|---|---|")
        for c, row in table.items():
            fmt = lambda v, s="{:.3f}": "—" if v is None else s.format(v)  # noqa: E731
            print(f"| {c} | {row['n']} | {fmt(row['correct'], '{:.1%}')} | {fmt(row['w'])} | {fmt(row['factor'])} |")


if __name__ == "__main__":
    main()
