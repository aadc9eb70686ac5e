"""`robustfer audit`: rank a data set's training images by how likely their label is wrong.

Out-of-sample probabilities come either from K-fold cross-fitting (K CE models, each trained by the
ordinary trainer with `--fold I/K` on the other folds and predicting its own fold into RUN/heldout.npz,
as bench's cleanlab cells do) or from a `--checkpoint` trained on other data, which predicts the training
images directly. They are scored with cleanlab's `find_label_issues` (prune by noise rate, issues ranked
by self-confidence), and every image gets a score:

    score = 1 - p(given label)          + 1 if cleanlab flags the image as a label issue

so the csv, sorted by score, lists cleanlab's issues first (in cleanlab's self-confidence order) and then
the remaining images by how little probability the model gives their label; score lies in [0, 2].
The suggested label is the argmax of the out-of-sample probabilities.

Per-sample flags of the robust methods (NCCTFER's / DNFER's `flagged_noisy`) are not combined: a train
run folder keeps only their per-epoch aggregates (metrics.jsonl: flagged_fraction, noise_precision), not
which images were flagged.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

from robustfer.errors import RobustferError

FIELDS = ("image", "given_label", "suggested_label", "score")
# The stated quick cross-fitting recipe: K CE models of the default compact CNN, the shared CPU recipe
# (SGD 0.05 one-cycle, batch 128) for DEFAULT_EPOCHS epochs each.
DEFAULT_FOLDS = 3
DEFAULT_EPOCHS = 5
DEFAULT_TOP = 48


def training_data(dataset: str, root, noise: str | None = None, limit: int | None = None, seed: int = 1,
                  cache_dir=None, label_mode: str = "majority"):
    """The training images exactly as `train` sees them: noise on the whole split, then the first `limit`."""
    from robustfer.data import load_dataset
    from robustfer.data.noise import apply_noise
    from robustfer.train.config import parse_noise

    kw = {"cache_dir": Path(cache_dir) if cache_dir else None}
    if dataset == "ferplus":
        kw["label_mode"] = label_mode
    data = load_dataset(dataset, root, "train", **kw)
    if noise:
        kind, rate, nseed = parse_noise(noise)
        data = apply_noise(data, kind, rate, seed if nseed is None else nseed)
    if limit:
        data = data.subset(np.arange(min(limit, len(data))))
    return data


def rank(labels: np.ndarray, probs: np.ndarray, files, classes, flipped: np.ndarray | None = None) -> list[dict]:
    """Rows (most suspicious first) from given labels and out-of-sample probabilities (N x C)."""
    from cleanlab.filter import find_label_issues

    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(classes):
        raise RobustferError(f"probabilities of shape {probs.shape} do not match {len(labels)} labels and "
                             f"{len(classes)} classes")
    issues = find_label_issues(labels=labels, pred_probs=probs, return_indices_ranked_by="self_confidence",
                               n_jobs=1)  # cleanlab forks workers otherwise: a fork of a process with torch's threads can deadlock
    flagged = np.zeros(len(labels), bool)
    flagged[issues] = True
    p_given = probs[np.arange(len(labels)), labels]
    score = 1.0 - p_given + flagged
    suggested = probs.argmax(1)
    # flagged first in cleanlab's order, then the rest by score; ties keep the data set's order
    rest = np.array([i for i in np.argsort(-score, kind="stable") if not flagged[i]], np.int64)
    order = np.concatenate([np.asarray(issues, np.int64), rest])
    return [{"image": str(files[i]), "given_label": classes[labels[i]], "suggested_label": classes[suggested[i]],
             "score": float(score[i]), "p_given": float(p_given[i]), "p_suggested": float(probs[i, suggested[i]]),
             "issue": bool(flagged[i]), "flipped": None if flipped is None else bool(flipped[i])} for i in order]


def write_csv(rows: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FIELDS)
        for r in rows:
            w.writerow([r["image"], r["given_label"], r["suggested_label"], f"{r['score']:.6f}"])
    tmp.replace(path)
    return path


def noise_scores(rows: list[dict], fraction: float = 0.1) -> dict | None:
    """Against the true flip mask (synthetic noise): precision and recall of the top `fraction` of the
    ranking, and of cleanlab's flagged set; None without a flip mask."""
    if not rows or rows[0]["flipped"] is None:
        return None
    from robustfer.evaluate import noise_detection

    flipped = np.array([r["flipped"] for r in rows], bool)
    k = max(1, math.ceil(fraction * len(rows)))
    top = np.zeros(len(rows), bool)
    top[:k] = True
    t = noise_detection(top, flipped)
    c = noise_detection(np.array([r["issue"] for r in rows], bool), flipped)
    return {"images": len(rows), "flipped": int(flipped.sum()), "noise_rate": float(flipped.mean()),
            "top_fraction": fraction, "top_k": k, "top_precision": t["noise_precision"], "top_recall": t["noise_recall"],
            "cleanlab_flagged": int(sum(r["issue"] for r in rows)), "cleanlab_precision": c["noise_precision"],
            "cleanlab_recall": c["noise_recall"]}


def contact_sheet(rows: list[dict], data, path, top: int = DEFAULT_TOP, cols: int = 8) -> Path:
    """A PNG grid of the `top` most suspicious images, each titled with its given and suggested label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {f: i for i, f in enumerate(data.files)}
    sel = rows[:max(1, top)]
    cols = min(cols, len(sel))
    nrows = math.ceil(len(sel) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(1.9 * cols, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), sel):
        img = np.asarray(data.images[index[r["image"]]])
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(f"given {r['given_label']}\nsugg. {r['suggested_label']} {r['p_suggested']:.2f}",
                     fontsize=7, color="crimson" if r["issue"] else "black")
    fig.suptitle(f"top {len(sel)} label suspects (red: cleanlab issue)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def checkpoint_probs(checkpoint, data, device: str = "cpu") -> np.ndarray:
    """Softmax probabilities (columns in the data set's class order) of a trained model on `data`."""
    import torch

    from robustfer.data.classes import canonical_name
    from robustfer.models.predict import predict_logits
    from robustfer.train.checkpoint import load_trained

    model, spec, classes, cfg = load_trained(checkpoint, device=device)
    if cfg.get("dataset") == data.name and cfg.get("train_split", "train") == "train" and not cfg.get("fold"):
        print(f"warning: {checkpoint} was trained on {data.name}'s training split: its probabilities on these images "
              "are in-sample and hide wrong labels it memorised; prefer cross-fitting (drop --checkpoint)",
              file=sys.stderr)
    ck = [canonical_name(c) for c in classes]
    own = [canonical_name(c) for c in data.classes]
    if sorted(ck) != sorted(own):
        raise RobustferError(f"checkpoint {checkpoint} predicts the classes {list(classes)}, the data set has "
                             f"{list(data.classes)}: audit with a checkpoint trained on the same class list")
    images = torch.from_numpy(np.array(data.images)).to(device)
    logits = predict_logits(model, images, spec["size"], spec["channels"], spec["norm"])
    probs = torch.softmax(logits.float(), 1).cpu().numpy()
    return probs[:, [ck.index(c) for c in own]]


def work_dir(out, folds: int, epochs: int, noise: str | None, limit: int | None, seed: int) -> Path:
    """The cross-fitting runs' folder next to --out, named by its settings (a rerun resumes it)."""
    out = Path(out)
    tag = f"ce_k{folds}_e{epochs}_{(noise or 'given').replace(':', '')}_s{seed}" + (f"_n{limit}" if limit else "")
    return out.parent / f"{out.stem}_audit_runs" / tag


def crossfit_probs(dataset: str, root, out, data, folds: int = DEFAULT_FOLDS, epochs: int = DEFAULT_EPOCHS,
                   noise: str | None = None, limit: int | None = None, seed: int = 1, device: str = "auto",
                   threads: int | None = None, cache_dir=None, label_mode: str = "majority",
                   eval_limit: int | None = 1000, quiet: bool = True, log=None) -> np.ndarray:
    """Out-of-sample probabilities in `data`'s image order from K cross-fitted CE runs (resumable)."""
    from robustfer.train import TrainConfig, train

    wd = work_dir(out, folds, epochs, noise, limit, seed)
    paths = []
    for i in range(folds):
        run = wd / f"fold{i}of{folds}"
        if log:
            log(f"fold {i + 1}/{folds}: CE on the other folds, {epochs} epochs -> {run}")
        cfg = TrainConfig(dataset=dataset, root=str(root), out=str(run), method="ce", epochs=epochs, seed=seed,
                          noise=noise, limit=limit, fold=f"{i}/{folds}", device=device, threads=threads,
                          cache_dir=None if cache_dir is None else str(cache_dir), label_mode=label_mode,
                          eval_every=epochs, eval_limit=eval_limit)
        train(cfg, quiet=quiet, auto_resume=True)
        if not (run / "heldout.npz").exists():
            raise RobustferError(f"{run} has no heldout.npz: delete the folder and run audit again")
        paths.append(run / "heldout.npz")
    parts = [np.load(p) for p in paths]
    files = np.concatenate([d["files"] for d in parts])
    probs = np.concatenate([d["probs"] for d in parts])
    labels = np.concatenate([d["labels"] for d in parts])
    if list(parts[0]["classes"]) != list(data.classes):
        raise RobustferError(f"{wd}: the fold runs' classes differ from the data set's: delete the folder")
    where = {f: i for i, f in enumerate(files)}
    missing = [f for f in data.files if f not in where]
    if missing or len(files) != len(data):
        raise RobustferError(f"{wd}: the fold runs cover other images than --root/--limit select "
                             f"({len(missing)} missing): delete the folder and run audit again")
    idx = np.array([where[f] for f in data.files])
    if not np.array_equal(labels[idx], data.labels):
        raise RobustferError(f"{wd}: the fold runs were trained with other labels: delete the folder")
    return probs[idx]


def audit(dataset: str, root, out, checkpoint=None, folds: int = DEFAULT_FOLDS, epochs: int = DEFAULT_EPOCHS,
          noise: str | None = None, limit: int | None = None, sheet=None, top: int = DEFAULT_TOP, seed: int = 1,
          device: str = "auto", threads: int | None = None, cache_dir=None, label_mode: str = "majority",
          eval_limit: int | None = 1000, quiet: bool = True) -> list[dict]:
    """Rank the training images of `dataset` at `root` by how likely their label is wrong; writes the csv
    `out` (image,given_label,suggested_label,score, most suspicious first) and, unless `sheet` is False,
    a contact sheet (default: `out` with .png) of the `top` suspects. Returns all rows, in csv order, with
    also p_given, p_suggested, issue (cleanlab's flag) and flipped (the true flip under `noise`, else None)."""
    root = Path(root)
    if not root.is_dir():
        raise RobustferError(f"--root {root} does not exist: pass the {dataset} folder as its publisher ships it")
    if checkpoint is None and (not isinstance(folds, int) or folds < 2):
        raise RobustferError(f"--folds {folds}: cross-fitting needs at least 2 folds (default {DEFAULT_FOLDS})")
    if checkpoint is None and epochs < 1:
        raise RobustferError(f"--epochs {epochs}: need at least 1")
    if limit is not None and limit < 1:
        raise RobustferError(f"--limit {limit}: need at least 1 image")
    if top < 1:
        raise RobustferError(f"--top {top}: need at least 1")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise RobustferError(f"checkpoint {checkpoint} does not exist: pass a last.pt or best.pt from a train run folder")
    log = None if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    data = training_data(dataset, root, noise, limit, seed, cache_dir, label_mode)
    if checkpoint is not None:
        from robustfer.train.trainer import resolve_device

        probs = checkpoint_probs(checkpoint, data, str(resolve_device(device)))
    else:
        if len(data) < 2 * folds:
            raise RobustferError(f"--folds {folds}: {len(data)} training images are too few; lower --folds or raise --limit")
        probs = crossfit_probs(dataset, root, out, data, folds, epochs, noise, limit, seed, device, threads,
                               cache_dir, label_mode, eval_limit, quiet, log)
    rows = rank(data.labels, probs, data.files, data.classes, data.flipped)
    write_csv(rows, out)
    if sheet is not False:
        contact_sheet(rows, data, Path(out).with_suffix(".png") if sheet in (None, True) else sheet, top)
    return rows
