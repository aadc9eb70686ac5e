"""A grid's finished run folders -> results.csv (one row per cell), results.md (mean ± std over seeds,
controls beside their methods, best per column in bold) and matplotlib plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from robustfer.bench.grid import Cell

COLUMNS = ["cell", "method", "control_of", "noise_type", "noise_rate", "seed", "sweep", "selected_on",
           "last_accuracy", "last_mean_class_accuracy", "best_accuracy", "best_mean_class_accuracy", "best_epoch",
           "last5_accuracy", "last5_mean_class_accuracy", "flagged_fraction", "noise_precision", "noise_recall",
           "epochs", "wall_s", "images_per_s",
           # vote-aware figures (methods.md §5) where the test split has annotator votes (FERPlus), else empty
           "last_vote_kl", "last_top_vote_prob", "last_plausible_accuracy",
           "best_vote_kl", "best_top_vote_prob", "best_plausible_accuracy",
           # last-epoch training figures under synthetic noise, where the method logs them (trainer.noise_figures)
           "argmax_clean_recovery", "pin_argmax_clean_recovery", "confidence_mean_flipped", "confidence_mean_clean",
           "precision"]  # the training precision the cell resolved (config.json's precision_resolved)
VOTE_KEYS = ("vote_kl", "top_vote_prob", "plausible_accuracy")
# (column, table title) of the last-epoch training figures, tabled where any finished cell has them
TRAINING_FIGURES = (
    ("argmax_clean_recovery", "Flipped training labels whose clean class the trained network's argmax gives "
                              "(on the training views, last epoch, %)"),
    ("pin_argmax_clean_recovery", "Flipped training labels whose clean class POI's prior network (PIN) gives "
                                  "(last epoch, %)"),
    ("confidence_mean_flipped", "Mean confidence c on flipped labels (last epoch)"),
    ("confidence_mean_clean", "Mean confidence c on clean labels (last epoch)"),
)


def noise_parts(noise: str) -> tuple[str, float]:
    return ("none", 0.0) if noise == "clean" else (noise.split(":")[0], float(noise.split(":")[1]))


def history(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def precision_of(run: Path) -> str | None:
    """config.json's precision_resolved (fp32 / bf16) of a run folder, None where it is missing."""
    try:
        return json.loads((run / "config.json").read_text()).get("precision_resolved")
    except (OSError, ValueError):
        return None


def cell_row(cell: Cell, run: Path) -> dict | None:
    """The results.csv row of a finished cell (None while it is not finished)."""
    if not (run / "summary.json").exists():
        return None
    s = json.loads((run / "summary.json").read_text())
    last = history(run)[-1]
    kind, rate = noise_parts(cell.noise)
    return {
        "cell": cell.name, "method": cell.method, "control_of": "+".join(cell.control_of), "noise_type": kind,
        "noise_rate": rate, "seed": cell.seed, "sweep": " ".join(f"{k}={v}" for k, v in cell.sweep.items()),
        "selected_on": s.get("selected_on", "test"),
        "last_accuracy": s["last"]["accuracy"], "last_mean_class_accuracy": s["last"]["mean_class_accuracy"],
        "best_accuracy": s["best"]["accuracy"], "best_mean_class_accuracy": s["best_mean_class"]["mean_class_accuracy"],
        "best_epoch": s["best"]["epoch"], "last5_accuracy": s["last5"]["accuracy"],
        "last5_mean_class_accuracy": s["last5"]["mean_class_accuracy"],
        "flagged_fraction": last.get("flagged_fraction"), "noise_precision": last.get("noise_precision"),
        "noise_recall": last.get("noise_recall"), "epochs": s["epochs"], "wall_s": s["wall_s"], "precision": precision_of(run),
        "images_per_s": s["images_per_s"],
        **{f"{blk}_{k}": s[blk].get(k) for blk in ("last", "best") for k in VOTE_KEYS},
        **{k: last.get(k) for k, _ in TRAINING_FIGURES},
    }


def collect(out: Path, cells: list[Cell]) -> list[dict]:
    """Rows of the finished cells; writes OUT/results.csv."""
    rows = [r for c in cells if c.role != "crossfit" and (r := cell_row(c, Path(c.config(out).out))) is not None]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return rows


def label(row: dict) -> str:
    return f"ce @ {row['control_of']} recipe" if row["control_of"] else row["method"]


def noise_label(row: dict) -> str:
    return "clean" if row["noise_type"] == "none" else f"{row['noise_type']} {row['noise_rate'] * 100:g}%"


def mean_std(values: list[float], scale: float = 100.0) -> tuple[float, float]:
    v = np.array(values, float) * scale
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def table_md(rows: list[dict], key: str, title: str, scale: float = 100.0, digits: int = 2,
             lower_is_better: bool = False) -> list[str]:
    """One markdown table: methods (controls beside) x noise settings, `key` as mean ± std over seeds (x `scale`:
    % by default), the best per column (highest, or lowest with `lower_is_better`) in bold."""
    noises = list(dict.fromkeys(noise_label(r) for r in rows))
    labels = list(dict.fromkeys(label(r) for r in rows))
    cells: dict[tuple[str, str], tuple[float, float, int]] = {}
    for lab in labels:
        for nz in noises:
            vals = [r[key] for r in rows if label(r) == lab and noise_label(r) == nz and r[key] not in (None, "")]
            if vals:
                cells[(lab, nz)] = (*mean_std([float(v) for v in vals], scale), len(vals))
    pick = min if lower_is_better else max
    best = {nz: pick((v[0] for (lab, n), v in cells.items() if n == nz), default=None) for nz in noises}
    out = [f"**{title}**", "", "| method | " + " | ".join(noises) + " |", "|---|" + "---:|" * len(noises)]
    for lab in labels:
        parts = []
        for nz in noises:
            if (lab, nz) not in cells:
                parts.append("-")
                continue
            m, s, n = cells[(lab, nz)]
            text = f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if n > 1 else "")
            parts.append(f"**{text}**" if math.isclose(m, best[nz]) else text)
        out.append(f"| {lab} | " + " | ".join(parts) + " |")
    return out + [""]


def results_md(rows: list[dict], out: Path, header: str = "", detection: list[dict] | None = None) -> str:
    """OUT/results.md: last epoch (the headline), best epoch by validation, last-5 mean, noise detection."""
    if not rows:
        text = header + "\nno finished cells yet\n"
        (out / "results.md").write_text(text)
        return text
    sel = sorted({r["selected_on"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    lines = [header, f"Seeds {', '.join(map(str, seeds))} (mean ± std where more than one); accuracies in %; "
             f"best epoch chosen on {', '.join(sel)}" + (" (SELECTION ON TEST)" if "test" in sel else "") + ".", ""]
    precisions = sorted({r["precision"] for r in rows if r.get("precision")})
    if precisions:  # `--precision auto` follows the CPU (bf16 where it is native): a grid resumed elsewhere may mix
        lines[2:2] = ["", f"Training precision: {', '.join(precisions)}" + (
            " (MIXED: the cells did not all train in one precision; see the precision column of results.csv)"
            if len(precisions) > 1 else "") + "."]
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        part = [r for r in rows if r["sweep"] == sweep]
        if sweep:
            lines += [f"### {sweep}", ""]
        lines += table_md(part, "last_accuracy", "Test accuracy, last epoch")
        lines += table_md(part, "last_mean_class_accuracy", "Test mean-class accuracy, last epoch")
        lines += table_md(part, "best_accuracy", f"Test accuracy at the epoch of best {'/'.join(sel)} accuracy")
        lines += table_md(part, "best_mean_class_accuracy", f"Test mean-class accuracy at the epoch of best {'/'.join(sel)} mean-class accuracy")
        lines += table_md(part, "last5_accuracy", "Test accuracy, mean of the last 5 epochs")
        voted = [r for r in part if r.get("last_vote_kl") not in (None, "")]
        if voted:  # vote-aware figures (methods.md §5), where the test split has annotator votes
            lines += table_md(voted, "last_vote_kl", "Test vote KL(votes ‖ p) in nats, last epoch (lower is better)",
                              scale=1.0, digits=3, lower_is_better=True)
            lines += table_md(voted, "last_top_vote_prob", "Test top-vote probability (model's probability of the "
                              "annotators' top class, %), last epoch")
            lines += table_md(voted, "last_plausible_accuracy", "Test plausible accuracy (predicted class got at least "
                              "2 votes, %), last epoch")
        for key, title in TRAINING_FIGURES:
            have = [r for r in part if r.get(key) not in (None, "")]
            if have:
                pct = not key.startswith("confidence")
                lines += table_md(have, key, title, scale=100.0 if pct else 1.0, digits=2 if pct else 3,
                                  lower_is_better=key == "confidence_mean_flipped")
        lines += table_md(part, "wall_s", "Training time, minutes (wall clock on this machine)", scale=1 / 60, digits=1,
                          lower_is_better=True)
        flagged = [r for r in part if r["noise_precision"] not in (None, "")]
        if flagged:
            lines += table_md(flagged, "noise_precision", "Noise precision (flagged that were flipped), last epoch")
            lines += table_md(flagged, "noise_recall", "Noise recall (flipped that were flagged), last epoch")
    if detection:
        from robustfer.bench.crossfit import detection_md

        lines += detection_md(detection)
    wall = sum(r["wall_s"] for r in rows)
    lines += [f"{len(rows)} cells, {wall / 60:.1f} min of training in total.", ""]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    return text


def plots(rows: list[dict], cells: list[Cell], out: Path) -> list[Path]:
    """accuracy_vs_noise.png, epochs.png (test accuracy per epoch per cell), noise_pr.png (precision /
    recall per epoch of the methods that flag samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if rows:
        kinds = sorted({r["noise_type"] for r in rows if r["noise_type"] != "none"}) or ["none"]
        fig, axes = plt.subplots(2, len(kinds), figsize=(5 * len(kinds), 7), squeeze=False)
        for j, kind in enumerate(kinds):
            for i, key in enumerate(("last_accuracy", "last_mean_class_accuracy")):
                ax = axes[i][j]
                for lab in dict.fromkeys(label(r) for r in rows):
                    pts = {}
                    for r in rows:
                        if label(r) == lab and r["noise_type"] in (kind, "none"):
                            pts.setdefault(r["noise_rate"], []).append(r[key] * 100)
                    if pts:
                        xs = sorted(pts)
                        ax.errorbar([x * 100 for x in xs], [np.mean(pts[x]) for x in xs],
                                    yerr=[np.std(pts[x]) for x in xs], marker="o", capsize=3, label=lab,
                                    linestyle="--" if lab.startswith("ce @") else "-")
                ax.set_xlabel(f"{kind} noise rate %")
                ax.set_ylabel(("test accuracy" if i == 0 else "test mean-class accuracy") + " % (last epoch)")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "accuracy_vs_noise.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    finished = [c for c in cells if c.role != "crossfit" and (Path(c.config(out).out) / "summary.json").exists()]
    if finished:
        noises = list(dict.fromkeys(c.noise for c in finished))
        fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 4), squeeze=False)
        for ax, nz in zip(axes[0], noises):
            for c in finished:
                if c.noise == nz:
                    h = [r for r in history(Path(c.config(out).out)) if "accuracy" in r]
                    ax.plot([r["epoch"] for r in h], [r["accuracy"] * 100 for r in h], marker=".", label=c.name,
                            linestyle="--" if c.control_of else "-")
            ax.set_title(nz)
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy %")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        written.append(out / "epochs.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

        flaggers = [c for c in finished if any("noise_precision" in r for r in history(Path(c.config(out).out)))]
        if flaggers:
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            for c in flaggers:
                h = [r for r in history(Path(c.config(out).out)) if "noise_precision" in r]
                for ax, key in zip(axes, ("noise_precision", "noise_recall")):
                    ax.plot([r["epoch"] for r in h], [r[key] * 100 for r in h], marker=".", label=c.name)
            for ax, key in zip(axes, ("noise precision %", "noise recall %")):
                ax.set_xlabel("epoch")
                ax.set_ylabel(key)
                ax.grid(alpha=0.3)
            axes[0].legend(fontsize=6)
            fig.tight_layout()
            written.append(out / "noise_pr.png")
            fig.savefig(written[-1], dpi=120)
            plt.close(fig)
    return written
