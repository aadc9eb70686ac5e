"""Accuracy versus wall time of training on this machine: which model and recipe reach the best FERPlus test
accuracy within a given number of minutes (issue 12).

Every candidate (a `--model` plus recipe settings) is trained under each wall-time budget B: its training
and evaluation speed are measured once on this machine (a short calibration run, kept in
OUT/calibration.json so a resumed grid trains the same epochs), and it gets the number of epochs that fits
B, with the one-cycle schedule spread over them. A cell is an ordinary run folder OUT/<candidate>_<B>m;
finished cells are skipped, killed ones resumed. The table reports the measured wall time, so a cell that
ran over its budget shows it. After training each model's inference speed (faces/s, batch 256, the test
split) is measured on its checkpoint.

    .venv/bin/python benchmarks/pareto.py --cells compact_s40@15,compact@15 --out benchmarks/out/pareto
    .venv/bin/python benchmarks/pareto.py --table --out benchmarks/out/pareto     # table + plot of finished cells

Protocol: FERPlus majority labels, FER2013Train (25,045 images) -> FER2013Test (3,137), CE, SGD one-cycle
(peak lr 0.05, momentum 0.9 Nesterov, wd 5e-4), batch 128, random crop + flip, seed 1, 2 torch threads,
label smoothing 0.1 unless the candidate says otherwise (the earlier 84.54% figure used it).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cell  # noqa: E402

from robustfer.data import load_dataset  # noqa: E402
from robustfer.models import MODELS, ModelEntry  # noqa: E402
from robustfer.models.compact import CompactCNN  # noqa: E402
from robustfer.models.predict import predict_logits  # noqa: E402
from robustfer.train import TrainConfig, train  # noqa: E402
from robustfer.train.checkpoint import load_trained  # noqa: E402

# Search-only networks, registered for this process only: they lost the comparison (BENCHMARKS.md), so
# the package does not ship them (the width winner, compact_s_w75, moved to robustfer.models).
SEARCH_MODELS = {
    # 5 convs instead of 7 (one 128 and one 256 conv dropped)
    "compact_s_d5": (32, 64, "M", 128, "M", 256, "M", 512),
}
for _name, _config in SEARCH_MODELS.items():
    MODELS.setdefault(_name, ModelEntry(lambda in_chans=1, c=_config: CompactCNN(in_chans, c, stem_stride=2), 48, 1, 15))

# candidate -> TrainConfig overrides (method_options merged over the shared label smoothing)
CANDIDATES: dict[str, dict] = {
    "compact": {"model": "compact"},                                  # the default before issue 12
    "compact_40": {"model": "compact", "input_size": 40},
    "compact_s": {"model": "compact_s"},                              # strided stem, 48 px
    "compact_s40": {"model": "compact_s40"},                          # strided stem, 40 px
    "compact_s_w75": {"model": "compact_s_w75"},                      # widths x 0.75
    "compact_s_d5": {"model": "compact_s_d5"},                        # 5 convs
    "compact_s40_ls0": {"model": "compact_s40", "method_options": {"label_smoothing": 0.0}},
    "compact_s40_ema": {"model": "compact_s40", "ema": 0.999},
    "compact_s40_b256": {"model": "compact_s40", "batch_size": 256, "lr": 0.1},
    "compact_s40_e3": {"model": "compact_s40", "eval_every": 3},
    # FERPlus's 10 votes as the target (label mode crossentropy, Microsoft's best scheme); no smoothing
    "compact_s40_votes": {"model": "compact_s40", "label_mode": "crossentropy",
                          "method_options": {"label_smoothing": 0.0}},
    "compact_s_votes": {"model": "compact_s", "label_mode": "crossentropy", "method_options": {"label_smoothing": 0.0}},
}
SHARED_OPTIONS = {"label_smoothing": 0.1}
# Plan for 95% of the budget: a short calibration run misjudged the sustained speed by up to 15% either
# way (compact_s40 588 img/s calibrated on 40 batches vs 500 over 15 minutes; compact 274 vs 290), so
# calibrations are taken from finished cells where there is one, and from 100 batches otherwise.
SAFETY = 0.95


def make_cfg(args, name: str, out: Path, epochs: int, **extra) -> TrainConfig:
    over = dict(CANDIDATES[name])
    opts = {**SHARED_OPTIONS, **over.pop("method_options", {})}
    # select_split test: the pareto cells report the last epoch only, and a validation pass would change their timing
    return TrainConfig(dataset="ferplus", root=str(args.root), out=str(out), method="ce", recipe="cpu", select_split="test",
                       epochs=epochs, seed=args.seed, threads=args.threads, cache_dir=args.cache_dir,
                       method_options=opts, **over, **extra)


def speed_key(name: str) -> str:
    """Candidates with the same network, input, batch and EMA train at the same speed."""
    c = CANDIDATES[name]
    return f"{c['model']}|{c.get('input_size')}|{c.get('batch_size', 128)}|{c.get('ema')}"


def calibrate(args, name: str) -> dict:
    """Training and evaluation images/s of a candidate on this machine, kept in OUT/calibration.json.

    Taken from a finished cell with the same network, input, batch and EMA where there is one (its
    sustained speed over a whole run), else from a short run (2 epochs of 100 batches; the second timed)."""
    cal_path = args.out / "calibration.json"
    cal = json.loads(cal_path.read_text()) if cal_path.exists() else {}
    key = speed_key(name)
    if key in cal:
        return cal[key]
    for run in sorted(args.out.glob("*_*m")):
        cand = run.name.rsplit("_", 1)[0]
        if cand in CANDIDATES and speed_key(cand) == key and (run / "summary.json").exists():
            s = json.loads((run / "summary.json").read_text())
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            evals = sum("accuracy" in r for r in rows)
            train_s = sum(n_train_of(run) / r["images_per_s"] for r in rows)
            eval_ips = evals * len(test_images(args)) / max(s["wall_s"] - train_s, 1e-6)
            cal[key] = {"train_images_per_s": s["images_per_s"], "eval_images_per_s": eval_ips, "from": run.name}
            break
    else:
        bs = CANDIDATES[name].get("batch_size", 128)
        tmp = args.out / f".calibrate_{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        train(make_cfg(args, name, tmp, 2, limit=100 * bs), quiet=True)
        hist = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
        cal[key] = {"train_images_per_s": hist[-1]["images_per_s"],  # the second epoch: past the warm-up
                    "eval_images_per_s": infer_speed(args, tmp / "last.pt", repeats=2), "from": "short run"}
        shutil.rmtree(tmp)
    cal_path.write_text(json.dumps(cal, indent=2))
    return cal[key]


def n_train_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["train_images"]


def plan_epochs(args, name: str, budget_min: float, n_train: int, n_eval: int) -> int:
    """Epochs whose training + evaluation fit SAFETY x the budget at the calibrated speeds."""
    c = calibrate(args, name)
    k = CANDIDATES[name].get("eval_every", 1)
    per_epoch = n_train / c["train_images_per_s"] + n_eval / c["eval_images_per_s"] / k
    return max(1, math.floor(SAFETY * budget_min * 60 / per_epoch))


def test_images(args) -> torch.Tensor:
    """The FERPlus test images as one uint8 tensor (read once per process)."""
    return _test_images(str(args.root), args.cache_dir)


@functools.lru_cache(maxsize=1)
def _test_images(root: str, cache_dir: str | None) -> torch.Tensor:
    d = load_dataset("ferplus", root, "test", cache_dir=Path(cache_dir) if cache_dir else None)
    return torch.from_numpy(np.array(d.images))


def infer_speed(args, ckpt: Path, repeats: int = 3) -> float:
    """Faces/s of the test-time network over the test split, batch 256 (best of `repeats` passes)."""
    model, spec, _, _ = load_trained(ckpt)
    model = model.to(memory_format=torch.channels_last)
    x = test_images(args)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        predict_logits(model, x, spec["size"], spec["channels"], spec["norm"], batch_size=256)
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def cell_rows(out: Path) -> list[dict]:
    rows = []
    for run in sorted(out.glob("*_*m")):
        if not (run / "summary.json").exists():
            continue
        s = json.loads((run / "summary.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        extra = json.loads((run / "inference.json").read_text()) if (run / "inference.json").exists() else {}
        if not extra:
            print(f"{run}: no inference.json (run `pareto.py --cells` for it)", flush=True)
        name, budget = run.name.rsplit("_", 1)
        rows.append({"candidate": name, "budget_min": float(budget[:-1]), "model": cfg["model"],
                     "input": cfg["input_size_resolved"], "batch": cfg["batch_size"], "epochs": s["epochs"],
                     "ema": cfg.get("ema"), "eval_every": cfg.get("eval_every", 1),
                     "ls": cfg["method_options"].get("label_smoothing"), "labels": cfg["label_mode"],
                     "wall_min": s["wall_s"] / 60, "acc": 100 * s["last"]["accuracy"],
                     "mca": 100 * s["last"]["mean_class_accuracy"], "train_ips": s["images_per_s"],
                     "faces_per_s": extra.get("faces_per_s")})
    return rows


def write_table(out: Path) -> str:
    rows = sorted(cell_rows(out), key=lambda r: (r["budget_min"], -r["acc"]))
    head = ("| candidate | model | input px | batch | training labels | label smoothing | EMA | eval every | budget min | epochs | "
            "wall min | test acc % (last) | mean-class % (last) | train img/s | inference faces/s |\n"
            "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['candidate']} | {r['model']} | {r['input']} | {r['batch']} | {r['labels']} | {r['ls']} | {r['ema'] or '-'} | "
        f"{r['eval_every']} | {r['budget_min']:g} | {r['epochs']} | {r['wall_min']:.1f} | {r['acc']:.2f} | "
        f"{r['mca']:.2f} | {r['train_ips']:.0f} | {r['faces_per_s'] or float('nan'):.0f} |\n" for r in rows)
    text = head + body
    (out / "pareto_table.md").write_text(text)
    plot(rows, out / "pareto.png")
    return text


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in sorted({r["candidate"] for r in rows}):
        pts = sorted((r for r in rows if r["candidate"] == name), key=lambda r: r["wall_min"])
        for ax, key in zip(axes, ("acc", "mca")):
            ax.plot([p["wall_min"] for p in pts], [p[key] for p in pts], "o-", label=name)
    for ax, title in zip(axes, ("test accuracy % (last epoch)", "mean-class accuracy % (last epoch)")):
        ax.set_xlabel("minutes of training (2 CPU cores, incl. per-epoch evaluation)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].axhline(85, color="grey", ls=":", lw=1)
    axes[0].axvline(15, color="grey", ls=":", lw=1)
    axes[1].legend(fontsize=7)
    fig.suptitle("FERPlus, CE, accuracy vs wall time of training (benchmarks/pareto.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ferplus")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/pareto"))
    ap.add_argument("--cells", default="compact@15,compact_s40@15",
                    help="comma-separated CANDIDATE@MINUTES, run in this order; candidates: " + ", ".join(CANDIDATES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--table", action="store_true", help="only write the table and plot of finished cells")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if not args.table:
        cache = Path(args.cache_dir) if args.cache_dir else None
        n_train = len(load_dataset("ferplus", str(args.root), "train", cache_dir=cache))
        n_eval = len(test_images(args))
        for cell in args.cells.split(","):
            name, _, minutes = cell.partition("@")
            if name not in CANDIDATES or not minutes:
                sys.exit(f"--cells {cell!r}: expected CANDIDATE@MINUTES with a candidate among {', '.join(CANDIDATES)}")
            budget = float(minutes)
            out = args.out / f"{name}_{budget:g}m"
            saved = out / "config.json"  # a started cell keeps the epochs it was planned with
            epochs = (json.loads(saved.read_text())["epochs"] if saved.exists()
                      else plan_epochs(args, name, budget, n_train, n_eval))
            cfg = make_cfg(args, name, out, epochs)
            run_cell(cfg, f"{name} {budget:g} min -> {epochs} epochs")
            if not (out / "inference.json").exists():
                (out / "inference.json").write_text(json.dumps({"faces_per_s": infer_speed(args, out / "last.pt")}))
    print(write_table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
