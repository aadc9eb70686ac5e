"""CE vs DNFER vs NCCTFER on FERPlus under synthetic label noise (issue 4), through robustfer.train.train.

CPU protocol: compact CNN at 48x48 grey, trained from scratch, seed 1 (model, noise, batches). Each
method keeps its OFFICIAL recipe (`--recipe official`, methods.md): CE Adam 2e-4, weight decay 1e-4,
ExpLR 0.9, batch 64; DNFER Adam backbone 1e-3 / head 1e-2, lr x0.95 per epoch, batch 128, drop_last,
warm-up 5; NCCTFER Adam encoder 1e-4 / heads 1e-3, constant, batch 128, drop_last, warm-up 4, k 4;
each with its own views (CE flip-or-noise + erasing; DNFER/NCCTFER their weak/strong RandAugment views,
scaled from 224 to 48 px). Only the length is cut: `--epochs` (default 12, not 40/60) on the first
`--limit` training images (default 5500 of 25k; the noise is drawn on the full split first).
`--recipe cpu` (the shared SGD + one-cycle protocol) is available but NCCTFER's SUM-reduced positive loss
multiplies its gradient by the confident-set size (~60 at batch 128) and diverges under SGD; Adam is
scale-free, which is what the official code relies on.
Cells: symmetric noise 0, 30, 50% and pair (LA-Net class-dependent) noise 30%. Test: FER2013Test every
epoch; the table gives last and best epoch accuracy and mean-class accuracy; for symmetric 30% a plot
of DNFER's and NCCTFER's noise precision/recall (non-confident flag vs true flips) over epochs.

Pretrained start (`--init`): the papers fine-tune a face-pretrained ResNet-18; the CPU analogue is a
compact CNN trained with CE on CLEAN labels of training images disjoint from the benchmark's first
`--limit` images (`robustfer train --method ce --offset N`, N >= --limit); every method then starts
from that encoder with fresh heads. The script refuses an --init whose run folder lists any of the
benchmark's training images or test images (train_images.txt):

    .venv/bin/robustfer train --dataset ferplus --root ../shared/data/ferplus --method ce --offset 6000 \
        --epochs 6 --out benchmarks/out/pretrain_offset6000
    .venv/bin/python benchmarks/noise_methods.py --epochs 6 --limit 4000 \
        --init benchmarks/out/pretrain_offset6000/last.pt --out benchmarks/out/noise_init

Sizing: a compact-CNN CE epoch on the 25k training images takes about 2 minutes on 2 idle cores, the
two-view methods about twice that. The defaults (--epochs 12 --limit 5500) are about 2 hours;
`--dry-run` prints the plan and the estimate. Cells whose summary.json exists are skipped; interrupted
runs are resumed from their last.pt.

    .venv/bin/python benchmarks/noise_methods.py --out benchmarks/out/noise_methods
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from robustfer.methods import create_method
from robustfer.train import TrainConfig

from common import check_disjoint_init, check_same_settings, run_cell

ROOT = Path(__file__).resolve().parents[1]
FERPLUS = ROOT.parent / "shared" / "data" / "ferplus"
NOISES = "symmetric:0,symmetric:0.3,symmetric:0.5,pair:0.3"
METHODS = "ce,dnfer,ncctfer"
# Seconds per training image of a compact-CNN CE epoch on 2 cores (2 min / 25k); two views ~2x; evaluation
# of the 3137 test images ~ a third of a training pass over them.
SEC_PER_IMAGE = 120 / 25_045
COST = {"ce": 1.0, "dnfer": 2.0, "ncctfer": 2.0}
TEST_IMAGES = 3137
PLOT_NOISE = "symmetric:0.3"


@dataclass(frozen=True)
class Cell:
    """One noise setting of the grid, e.g. 'symmetric:0.3' (rate 0 = the clean labels)."""

    spec: str

    @property
    def kind(self) -> str:
        return self.spec.split(":")[0]

    @property
    def rate(self) -> float:
        return float(self.spec.split(":")[1])

    @property
    def tag(self) -> str:
        return f"{self.kind[:4]}{round(self.rate * 100):02d}" if self.rate > 0 else "clean"

    @property
    def label(self) -> str:
        return f"{self.kind} {round(self.rate * 100)}%" if self.rate > 0 else "clean (0%)"

    @property
    def noise(self) -> str | None:
        """TrainConfig.noise: None for rate 0 (no flip mask, no noise figures)."""
        return self.spec if self.rate > 0 else None


def scaled_warmup(method: str, epochs: int) -> dict:
    """Warm-up shortened with the schedule: W * epochs / official epochs, at least 1 (e.g. NCCTFER 4 of 40 -> 1 of 10),
    so a shortened run keeps the official share of warm-up instead of spending half of it warming up."""
    m = create_method(method)
    if not hasattr(m, "warmup"):
        return {}
    return {"warmup": max(1, round(m.warmup * epochs / m.recipe["epochs"]))}


def config(args, method: str, cell: Cell, out: Path) -> TrainConfig:
    """The TrainConfig of one run."""
    opts = scaled_warmup(method, args.epochs) if args.scale_warmup else {}
    return TrainConfig(dataset="ferplus", root=str(args.root), out=str(out), method=method, model="compact",
                       recipe=args.recipe, epochs=args.epochs, limit=args.limit, seed=args.seed, init=args.init,
                       threads=args.threads, cache_dir=args.cache_dir, noise=cell.noise, method_options=opts)


def run_dir(args, method: str, cell: Cell) -> Path:
    return Path(args.out) / f"{method}_{cell.tag}"


def settings(args) -> dict:
    """config.json values a finished or interrupted run must share with this invocation to be reused."""
    return {"epochs": args.epochs, "limit": args.limit, "seed": args.seed, "recipe": args.recipe, "init": args.init}


def pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _load(run: Path) -> dict | None:
    return json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None


def _history(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def table(args, cells: list[Cell], methods: list[str]) -> str:
    """Markdown table of every finished run: last/best accuracy and mean-class accuracy, Δ to CE."""
    head = ["noise", "method", "acc last", "acc best (epoch)", "mean-class last", "mean-class best (epoch)",
            "Δ acc last vs CE", "flagged / precision / recall (last epoch)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        ce = _load(run_dir(args, "ce", cell))
        for m in methods:
            s = _load(run_dir(args, m, cell))
            if s is None:
                lines.append(f"| {cell.label} | {m} | " + " | ".join(["—"] * (len(head) - 2)) + " |")
                continue
            last = _history(run_dir(args, m, cell))[-1:] or [{}]
            noise = (f"{pct(last[0].get('flagged_fraction'))} / {pct(last[0].get('noise_precision'))} / "
                     f"{pct(last[0].get('noise_recall'))}" if "flagged_fraction" in last[0] else "—")
            delta = (f"{100 * (s['last']['accuracy'] - ce['last']['accuracy']):+.2f}" if ce and m != "ce" else "—")
            lines.append(
                f"| {cell.label} | {m} | {pct(s['last']['accuracy'])} | {pct(s['best']['accuracy'])} "
                f"({s['best']['epoch']}) | {pct(s['last']['mean_class_accuracy'])} | "
                f"{pct(s['best_mean_class']['mean_class_accuracy'])} ({s['best_mean_class']['epoch']}) | {delta} | {noise} |")
    scaled = {m: scaled_warmup(m, args.epochs).get("warmup") for m in methods}
    warm = ("scaled (" + ", ".join(f"{m} {w}" for m, w in scaled.items() if w) + " epochs)") if args.scale_warmup \
        else "official"
    start = f"encoder initialised from {args.init}" if args.init else "from scratch"
    note = (f"FERPlus (majority labels) train, FER2013Test; compact CNN 48x48 {start}, --recipe {args.recipe}, "
            f"{args.epochs} epochs, --limit {args.limit or 'none'}, seed {args.seed}, warm-up {warm}"
            f". Accuracies in %; epochs count "
            f"from 0; 'flagged' = share of training samples not confident in the weak view (all 0 during warm-up).\n\n"
            f"Command: `.venv/bin/python benchmarks/noise_methods.py --epochs {args.epochs} "
            f"--limit {args.limit or 0} --seed {args.seed} --recipe {args.recipe}{'' if args.scale_warmup else ' --official-warmup'}"
            f"{f' --init {args.init}' if args.init else ''} "
            f"--out {args.out}`")
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot(args, methods: list[str], path: Path) -> Path | None:
    """noise precision / recall / flagged fraction over epochs at symmetric 30% (png; dashed: end of each
    method's warm-up); None if no run has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = Cell(PLOT_NOISE)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    drawn = False
    for m in methods:
        rows = [r for r in _history(run_dir(args, m, cell)) if "flagged_fraction" in r]
        if not rows:
            continue
        drawn = True
        ep = [r["epoch"] for r in rows]
        warmup = (scaled_warmup(m, args.epochs).get("warmup") if args.scale_warmup
                  else getattr(create_method(m), "warmup", None))  # flags are all False before it ends
        for ax, key in zip(axes, ("noise_precision", "noise_recall", "flagged_fraction")):
            ys = [float("nan") if r.get(key) is None else r[key] for r in rows]
            line, = ax.plot(ep, ys, marker="o", label=m)
            if warmup:
                ax.axvline(warmup - 0.5, color=line.get_color(), linestyle="--", alpha=0.5)
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(axes, ("noise precision", "noise recall", "flagged fraction")):
        ax.set_title(f"{title} (symmetric 30%)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=FERPLUS, help="FERPlus folder (FER2013Train, ..., fer2013new.csv)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "noise_methods",
                   help="run folders, table.md and precision_recall_sym30.png")
    p.add_argument("--epochs", type=int, default=12, help="epochs per run (the default grid is about 2 h on 2 cores)")
    p.add_argument("--limit", type=int, default=5500, help="first N training images (0 = all 25k)")
    p.add_argument("--seed", type=int, default=1, help="seed of the model, the noise and the batches")
    p.add_argument("--recipe", choices=("official", "cpu"), default="official",
                   help="official: each method's own optimiser/lr/batch/schedule (default); cpu: the shared SGD one")
    p.add_argument("--methods", default=METHODS, help=f"comma-separated methods (default {METHODS})")
    p.add_argument("--noises", default=NOISES, help=f"comma-separated TYPE:RATE cells (default {NOISES})")
    p.add_argument("--init", default=None,
                   help="start every run's encoder from this checkpoint (heads fresh), as the papers start from "
                        "pretrained weights; e.g. a CE model trained on training images disjoint from --limit's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache")
    p.add_argument("--official-warmup", dest="scale_warmup", action="store_false",
                   help="keep the official warm-up epochs (default: scaled with --epochs / official epochs)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and a time estimate, train nothing")
    p.add_argument("--verbose", action="store_true", help="show the trainer's progress")
    p.add_argument("--table", action="store_true", help="only write table.md and the plot from the finished runs")
    args = p.parse_args(argv)
    args.limit = args.limit or None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cells = [Cell(s.strip()) for s in args.noises.split(",") if s.strip()]
    n = min(args.limit or 25_045, 25_045)
    todo, seconds = [], 0.0
    for cell in cells:
        for m in methods:
            check_same_settings(run_dir(args, m, cell), settings(args))
            if not (run_dir(args, m, cell) / "summary.json").exists():
                todo.append((m, cell))
                seconds += args.epochs * SEC_PER_IMAGE * (COST.get(m, 2.0) * n + TEST_IMAGES / 3)
    print(f"{len(todo)} of {len(cells) * len(methods)} runs to train, about {seconds / 3600:.1f} h on 2 idle cores "
          f"({args.epochs} epochs, limit {args.limit or 'none'}, recipe {args.recipe})", flush=True)
    if args.table:
        todo = []
    elif args.dry_run:
        for m, cell in todo:
            print(f"  {m:7s} {cell.label}")
        return 0
    else:
        check_disjoint_init(args.init, args.root, args.cache_dir, args.limit)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for m, cell in todo:
        run_cell(config(args, m, cell, run_dir(args, m, cell)), settings(args), cell.label, args.verbose)
    md = table(args, cells, methods)
    png = plot(args, methods, Path(args.out) / "precision_recall_sym30.png")
    if png:
        md += f"\nNoise precision/recall over epochs (symmetric 30%): `{png.name}`\n"
    (Path(args.out) / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
