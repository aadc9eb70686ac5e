"""CE vs NLA on FERPlus under label noise and class imbalance (issue 5), through robustfer.train.train.

Cells: symmetric noise 0/10/20/30% on the first `--limit` training images (noise drawn on the whole
split, seed 1), and long-tailed subsets (robustfer.data.imbalance) of factor 10/50/100, clean and with
20% noise, drawn from the first `--pool` training images (default: the whole split). Test: FER2013Test,
every epoch; the table gives last and best epoch (best by accuracy for overall, best by mean-class
accuracy for mean-class). Cells whose summary.json exists are skipped; interrupted ones are resumed;
a run folder trained with other settings is refused.

Pretrained start (`--recipe official --init CKPT`; BENCHMARKS.md's headline table): the papers fine-tune
a face-pretrained ResNet-18; the CPU analogue is a compact CNN trained with CE on CLEAN labels of
training images disjoint from every image a cell draws from (`robustfer train --offset N`, N >= --limit
and --pool), the same as benchmarks/noise_methods.py. Every run starts from that encoder with a fresh
head and keeps its method's official recipe and views (CE: Adam 2e-4, batch 64; NLA: Adam 1e-4, batch
32, pixel noise + flip + erasing, JSD SUM; both weight decay 1e-4, ExpLR 0.9). The script refuses an
--init whose run folder's train_images.txt lists an image the cells use or a test image:

    .venv/bin/robustfer train --dataset ferplus --root ../shared/data/ferplus --method ce --offset 12000 \
        --epochs 6 --threads 2 --out benchmarks/out/pretrain_offset12000
    .venv/bin/python benchmarks/nla_imbalance.py --recipe official --epochs 8 --limit 4000 --pool 12000 \
        --init benchmarks/out/pretrain_offset12000/last.pt --out benchmarks/out/nla_init

From scratch (`--recipe cpu`, the default): compact CNN, the shared SGD protocol (SGD 0.05, momentum
0.9, weight decay 5e-4, one-cycle, batch 128, drop_last) for both methods, or `--optimizer adam --lr
1e-3 --weight-decay 1e-4` for Adam with the same one-cycle; NLA's pixel-noise/erasing view is replaced
by the shared weak view (random crop + flip), as for CE. JSD reduction (`--nla-jsd`): the official SUM
over the batch weighs the JSD 0.5 N = 64 times a per-sample term at batch 128, harmless under Adam
(scale-free) but not under this SGD: in a probe (3000 images, 20% noise, 4 epochs) NLA with SUM
collapsed to a constant prediction (34.5% = the neutral share) while CE reached 61.1% and NLA with MEAN
54.1%. The default with --recipe cpu is therefore `mean`; with --recipe official, `sum`.

Sizing: `--dry-run` prints the plan and an estimate (on 2 idle cores a compact-CNN CE epoch over the
25k training images takes about 2 minutes, NLA about twice that).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustfer.data import load_dataset
from robustfer.data.imbalance import long_tailed_counts
from robustfer.train import TrainConfig

from common import check_disjoint_init, check_same_settings, run_cell

ROOT = Path(__file__).resolve().parents[1]
FERPLUS = ROOT.parent / "shared" / "data" / "ferplus"
NOISE_RATES = (0.0, 0.1, 0.2, 0.3)
FACTORS = (10, 50, 100)
# Seconds per training image for a compact-CNN CE epoch on 2 cores (2 min / 25k); NLA costs ~2x, evaluation ~1/3.
SEC_PER_IMAGE = 120 / 25_045
COST = {"ce": 1.0, "nla": 2.0}


@dataclass(frozen=True)
class Cell:
    """One row of the table: a noise rate and an optional imbalance factor."""

    noise: float
    imbalance: int | None = None

    @property
    def tag(self) -> str:
        return f"sym{round(self.noise * 100):02d}" + (f"_lt{self.imbalance}" if self.imbalance else "")

    @property
    def label(self) -> str:
        text = f"symmetric {round(self.noise * 100)}%"
        return text + (f", imbalance {self.imbalance}" if self.imbalance else "")


def grid() -> list[Cell]:
    """The issue's cells: noise levels on the full split, then each factor clean and with 20% noise."""
    return [Cell(r) for r in NOISE_RATES] + [Cell(r, f) for f in FACTORS for r in (0.0, 0.2)]


def train_size(args, cell: Cell, labels: np.ndarray, num_classes: int) -> int:
    """Training images of a cell: the long-tailed subset of the first --pool images, or the first --limit."""
    n = cell_limit(args, cell) or len(labels)
    if cell.imbalance:
        return int(long_tailed_counts(np.bincount(labels[:n], minlength=num_classes), cell.imbalance).sum())
    return min(n, len(labels))


def cell_limit(args, cell: Cell) -> int | None:
    """Images a cell draws from: the first --limit (balanced cells) or the first --pool (long-tailed subsets)."""
    return args.pool if cell.imbalance else args.limit


def config(args, method: str, cell: Cell, out: Path):
    """The TrainConfig of one run."""
    return TrainConfig(
        dataset="ferplus", root=str(args.root), out=str(out), method=method, model="compact", recipe=args.recipe,
        init=args.init,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        epochs=args.epochs, limit=cell_limit(args, cell), seed=args.seed, threads=args.threads, cache_dir=args.cache_dir,
        noise=f"symmetric:{cell.noise}" if cell.noise > 0 else None, imbalance=cell.imbalance,
        method_options=method_options(args, method))


def method_options(args, method: str) -> dict:
    """Per-method options of the benchmark (NLA: the JSD reduction)."""
    return {"jsd_reduction": args.nla_jsd} if method == "nla" else {}


def settings(args, method: str, cell: Cell) -> dict:
    """config.json values a finished or interrupted run must share with this invocation to be reused."""
    want = {"epochs": args.epochs, "seed": args.seed, "recipe": args.recipe, "init": args.init,
            "limit": cell_limit(args, cell), "method_options": method_options(args, method)}
    want.update({k: getattr(args, k) for k in ("optimizer", "lr", "weight_decay") if getattr(args, k) is not None})
    if args.recipe == "cpu" and args.optimizer is None:
        want["optimizer"] = "sgd"
    return want


def run_dir(args, method: str, cell: Cell) -> Path:
    return Path(args.out) / f"{method}_{cell.tag}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def table(args, cells: list[Cell], methods: list[str]) -> str:
    """Markdown table of every finished run: overall and mean-class accuracy, last and best."""
    head = ["cell", "train images"]
    for metric in ("acc", "mean-class acc"):
        for m in methods:
            head += [f"{m.upper()} {metric} last", f"{m.upper()} {metric} best"]
    if "ce" in methods and "nla" in methods:
        head += ["Δ acc last (NLA−CE)", "Δ mean-class last (NLA−CE)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        s, n = {}, "—"
        for m in methods:
            run = Path(args.out) / f"{m}_{cell.tag}"
            if (run / "summary.json").exists():
                s[m] = json.loads((run / "summary.json").read_text())
                n = str(json.loads((run / "config.json").read_text()).get("train_images", "—"))
        row = [cell.label, n]
        for key, best in (("accuracy", "best"), ("mean_class_accuracy", "best_mean_class")):
            for m in methods:
                row += [pct(s[m]["last"][key]), pct(s[m][best][key])] if m in s else ["—", "—"]
        if "ce" in methods and "nla" in methods:
            for key in ("accuracy", "mean_class_accuracy"):
                row.append(f"{100 * (s['nla']['last'][key] - s['ce']['last'][key]):+.2f}"
                           if "ce" in s and "nla" in s else "—")
        lines.append("| " + " | ".join(row) + " |")
    if args.recipe == "official":
        opt = "each method's official recipe (CE: Adam 2e-4, batch 64; NLA: Adam 1e-4, batch 32; weight decay 1e-4, ExpLR 0.9; official augmentations)"
    elif args.optimizer:
        opt = f"{args.optimizer} lr {args.lr} weight decay {args.weight_decay}, one-cycle, batch 128 (other settings of --recipe cpu)"
    else:
        opt = "--recipe cpu (SGD, one-cycle, batch 128)"
    flags = "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("seed", "optimizer", "lr", "weight_decay", "pool",
                                                                              "init", "cells") if getattr(args, k) is not None)
    start = f"encoder initialised from {args.init} (heads fresh)" if args.init else "from scratch"
    pool = f"the first {args.pool} training images" if args.pool else "the whole split"
    note = (f"FERPlus (majority labels), FER2013Test; compact CNN 48x48 {start}, {opt}, "
            f"{args.epochs} epochs, seed {args.seed}, NLA JSD reduction {args.nla_jsd}. Balanced cells: the first "
            f"{args.limit or 'all'} training images; long-tailed subsets drawn from {pool}. Accuracies in %; best = best epoch "
            f"(by accuracy / by mean-class accuracy).\n\nCommand: `.venv/bin/python benchmarks/nla_imbalance.py "
            f"--recipe {args.recipe} --epochs {args.epochs} --limit {args.limit or 0} --nla-jsd {args.nla_jsd}{flags} --out {args.out}`")
    return "\n".join(lines) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=FERPLUS, help="FERPlus folder (FER2013Train, ..., fer2013new.csv)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "nla_imbalance", help="run folders + table.md")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (the default grid is about 2 h on 2 cores)")
    p.add_argument("--limit", type=int, default=8000, help="first N training images of each cell's split (0 = all)")
    p.add_argument("--seed", type=int, default=1, help="seed of the model, the noise and the subset")
    p.add_argument("--methods", default="ce,nla", help="comma-separated methods")
    p.add_argument("--nla-jsd", choices=("mean", "sum"), default=None,
                   help="NLA's JSD reduction (default: sum, the official, with --recipe official; mean with --recipe cpu, "
                        "see the module docstring)")
    p.add_argument("--recipe", choices=("cpu", "official"), default="cpu",
                   help="cpu: the shared SGD protocol for both methods; official: each method's own recipe and views")
    p.add_argument("--init", default=None,
                   help="start every run from this checkpoint's encoder (heads fresh); refused if it was trained on "
                        "any image a cell draws from (pretrain with `robustfer train --offset N`)")
    p.add_argument("--pool", type=int, default=None,
                   help="draw the long-tailed subsets from the first N training images (default: the whole split)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="override --recipe cpu's SGD for both methods (adam: scale-free, as both official recipes)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate with --optimizer (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay with --optimizer")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache")
    p.add_argument("--dry-run", action="store_true", help="print the plan and a time estimate, train nothing")
    p.add_argument("--verbose", action="store_true", help="show the trainer's progress")
    p.add_argument("--table", action="store_true", help="only write table.md from the finished runs")
    p.add_argument("--cells", default=None,
                   help="comma-separated cell tags to train (e.g. sym00_lt50,sym20_lt50); default all. The table "
                        "lists only cells with results")
    args = p.parse_args(argv)
    args.limit = args.limit or None
    args.nla_jsd = args.nla_jsd or ("sum" if args.recipe == "official" else "mean")
    if args.recipe == "official" and (args.optimizer or args.lr or args.weight_decay):
        p.error("--optimizer/--lr/--weight-decay override --recipe cpu; --recipe official keeps each method's own")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cells = grid()
    if args.cells:
        wanted = set(args.cells.split(","))
        unknown = wanted - {c.tag for c in cells}
        if unknown:
            p.error(f"unknown cells {sorted(unknown)}; tags are {[c.tag for c in cells]}")
        cells = [c for c in cells if c.tag in wanted]
    data = load_dataset("ferplus", str(args.root), "train", cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    if not args.table:
        check_disjoint_init(args.init, args.root, args.cache_dir, max(cell_limit(args, c) or len(data) for c in cells))
    todo, seconds = [], 0.0
    for cell in cells:
        n = train_size(args, cell, data.labels, data.num_classes)
        for m in methods:
            check_same_settings(run_dir(args, m, cell), settings(args, m, cell))
            if not (Path(args.out) / f"{m}_{cell.tag}" / "summary.json").exists():
                todo.append((m, cell))
                seconds += args.epochs * SEC_PER_IMAGE * (COST.get(m, 2.0) * n + 3137 / 3)
    print(f"{len(todo)} of {len(cells) * len(methods)} runs to train, about {seconds / 3600:.1f} h on 2 idle cores "
          f"({args.epochs} epochs, limit {args.limit or 'none'})", flush=True)
    if args.table:
        todo = []
    elif args.dry_run:
        for m, cell in todo:
            print(f"  {m:4s} {cell.label}: {train_size(args, cell, data.labels, data.num_classes)} images")
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for m, cell in todo:
        run_cell(config(args, m, cell, run_dir(args, m, cell)), settings(args, m, cell), cell.label, args.verbose)
    md = table(args, cells, methods)
    (Path(args.out) / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
