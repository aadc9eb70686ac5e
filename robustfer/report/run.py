"""`robustfer report RUN`: the qualitative figures of a train run folder, written to RUN/report/.

| file | what |
|---|---|
| `confusion.png` | the eval split's confusion matrix as a heat map (rows normalised) |
| `recall.png` | per-class recall bars on the eval split, with the mean-class accuracy |
| `tsne_test.png` | t-SNE of the eval split's features (the classifier's input), coloured by true class |
| `tsne_train_noise.png` | synthetic noise only: t-SNE of the training features, coloured by clean vs flipped label and by the method's flag |
| `distrusted.png` | the training images the method distrusts most, captioned given vs predicted label |
| `report.json` | the figures, their seconds, the checkpoint and the trust signal used |

The model is the run's `last.pt` by default (the epoch whose per-sample statistics samples.npz holds), `best.pt`
or any checkpoint of the run with `checkpoint=`. Training images are read again as the run read them
(train.data.load_splits on its config.json: the same noise, --limit, --offset, holdout).

The method's trust signal, per training image (the first that exists): samples.npz's `flagged_noisy` (a flag,
NCCTFER, DNFER, SCN), its `weight` / `alpha` / `confidence` (continuous, low = distrusted: NLA, SCN, POI),
else the model's softmax probability of the given label at report time (low = distrusted; CE and runs
without samples.npz). "Distrusts most": flagged first, then the lowest signal, ties broken by the lowest
probability of the given label.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from robustfer.errors import RobustferError
from robustfer.report import figures as fig

CONTINUOUS = ("weight", "alpha", "confidence")   # samples.npz statistics where low = distrusted


def features_and_logits(model, images: np.ndarray, spec: dict, batch_size: int = 512, device: str = "cpu"):
    """(features N x D, logits N x K) of uint8 images N x C x H x W: the features are what the classifier `fc` takes
    (mean over tokens for a token head), else the backbone's pooled output."""
    import torch

    from robustfer.augment import test_transform
    from robustfer.models.cam import find_backbone

    head = getattr(model, "fc", None)
    feats: list[torch.Tensor] = []
    if isinstance(head, torch.nn.Module):
        hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    else:
        bb = find_backbone(model)
        hook = bb.register_forward_hook(lambda m, inp, out: feats.append(out.detach()))
    out_f, out_z = [], []
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.array(images[i:i + batch_size])).to(device)  # a copy: memory maps are read-only
                feats.clear()
                z = model(test_transform(x, spec["size"], spec["channels"], spec["norm"]))
                f = feats[-1].float()
                out_f.append((f.mean(1) if f.dim() == 3 else f.flatten(1)).cpu().numpy())
                out_z.append(z.float().cpu().numpy())
    finally:
        hook.remove()
    k = len(out_z[0][0]) if out_z else 0
    return (np.concatenate(out_f) if out_f else np.zeros((0, 0), np.float32),
            np.concatenate(out_z) if out_z else np.zeros((0, k), np.float32))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of k of n points (all when n <= k), seeded."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def trust_signal(samples: dict | None, labels: np.ndarray, p_given: np.ndarray) -> tuple[np.ndarray, str, bool]:
    """(per-image signal, its name, binary?) — see the module docstring for the order."""
    if samples is not None and len(samples.get("labels", [])) == len(labels) and np.array_equal(samples["labels"], labels):
        if "stat_flagged_noisy" in samples:
            return np.asarray(samples["stat_flagged_noisy"], np.float64), "flagged_noisy", True
        for k in CONTINUOUS:
            if f"stat_{k}" in samples:
                return np.asarray(samples[f"stat_{k}"], np.float64), k, False
    return p_given.astype(np.float64), "p(given label) of the model", False


def distrust_order(signal: np.ndarray, binary: bool, p_given: np.ndarray) -> np.ndarray:
    """Indices, most distrusted first: flagged (binary) or lowest signal, ties by the lowest p(given); NaN last."""
    s = np.where(np.isnan(signal), -np.inf if binary else np.inf, signal)
    primary = -s if binary else s
    return np.lexsort((p_given, primary))


def resolve(run: Path, checkpoint: str | None) -> Path:
    if checkpoint in (None, "last", "best"):
        path = run / f"{checkpoint or 'last'}.pt"
        if not path.is_file():
            raise RobustferError(f"{path} does not exist: report needs a finished or interrupted train run folder "
                                 "(its last.pt / best.pt; checkpoints are not kept in committed benchmark folders)")
        return path
    return Path(checkpoint)


def make_report(run: str | Path, checkpoint: str | None = None, out: str | Path | None = None, root: str | None = None,
                max_points: int = 6000, top: int = 32, seed: int = 0, device: str = "cpu",
                quiet: bool = False) -> dict:
    """Write the figures of run folder `run` to `out` (default RUN/report) and return report.json's content."""
    from robustfer.train.checkpoint import load_trained
    from robustfer.train.config import TrainConfig
    from robustfer.train.data import load_splits

    run = Path(run)
    if not (run / "config.json").is_file():
        raise RobustferError(f"{run} is not a train run folder (no config.json): pass the --out folder of `robustfer train`")
    out = Path(out) if out is not None else run / "report"
    ck = resolve(run, checkpoint)
    say = (lambda *a: None) if quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    for _ in range(3):  # a run still training replaces last.pt atomically: model and epoch from the same file
        stamp = ck.stat().st_mtime_ns
        epoch = load_epoch(ck)
        model, spec, classes, saved = load_trained(ck, device)
        if ck.stat().st_mtime_ns == stamp:
            break
    cfg = TrainConfig.load(run / "config.json")
    if root is not None:
        cfg.root = root
    try:
        train, _, evald = load_splits(cfg, spec["channels"])
    except RobustferError as e:
        raise RobustferError(f"{e} (report reads the run's data again from {cfg.root}; pass --root if it moved)") from None
    if tuple(evald.classes) != tuple(classes):
        raise RobustferError(f"{ck} was trained on the classes {list(classes)}, the data at {cfg.root} has "
                             f"{list(evald.classes)}: pass the --root the run was trained on")
    f_test, z_test = features_and_logits(model, np.asarray(evald.images), spec, device=device)
    train_images = np.asarray(train.images)
    f_train, z_train = features_and_logits(model, train_images, spec, device=device)
    times = {"load_and_features": time.perf_counter() - t0}
    say(f"features: {len(f_test)} eval + {len(f_train)} training images ({times['load_and_features']:.1f} s)")
    name = f"{saved['method']} on {cfg.dataset}" + (f", {cfg.noise}" if cfg.noise else ", clean labels" if not cfg.noise_file else f", {cfg.noise_file}")
    tag = f"{name}; {ck.name} (epoch {epoch - 1})"
    figures: dict[str, dict] = {}

    def timed(key, file, make):
        t = time.perf_counter()
        make(out / file)
        figures[key] = {"file": file, "seconds": round(time.perf_counter() - t, 2)}
        say(f"wrote {out / file} ({figures[key]['seconds']:.1f} s)")

    from robustfer.evaluate import confusion_matrix, per_class_recall

    pred = z_test.argmax(1)
    cm = confusion_matrix(pred, evald.labels, len(classes))
    recall = per_class_recall(cm)
    acc = float((pred == evald.labels).mean())
    timed("confusion", "confusion.png", lambda p: fig.confusion_heatmap(
        cm, classes, p, f"{tag}\n{evald.split} ({len(pred)} images): accuracy {acc:.3f}"))
    timed("recall", "recall.png", lambda p: fig.recall_bars(recall, cm.sum(1), classes, p, f"{tag}\nper-class recall on {evald.split}"))
    idx = _sample(len(f_test), max_points, seed)
    timed("tsne_test", "tsne_test.png", lambda p: fig.scatter_by_class(
        fig.embed_2d(f_test[idx], seed), evald.labels[idx], classes, p,
        f"{tag}\nt-SNE of {evald.split} features ({len(idx)} images), coloured by true class"))

    samples = None
    if (run / "samples.npz").is_file():
        with np.load(run / "samples.npz") as z:
            samples = {k: z[k] for k in z.files}
    p_given = _softmax(z_train)[np.arange(len(train.labels)), train.labels]
    signal, signal_name, binary = trust_signal(samples, train.labels, p_given)
    if train.flipped is not None:
        idx = _sample(len(f_train), max_points, seed)
        timed("tsne_train_noise", "tsne_train_noise.png", lambda p: fig.scatter_noise(
            fig.embed_2d(f_train[idx], seed), train.flipped[idx], p,
            f"{tag}\nt-SNE of the training features ({len(idx)} of {len(f_train)} images)",
            signal[idx], signal_name, binary))
    order = distrust_order(signal, binary, p_given)[:top]
    names = list(classes)
    z_pred = z_train.argmax(1)
    caps = [f"given {names[train.labels[i]]}\npred {names[z_pred[i]]}"
            + (f"\nclean {names[train.clean_labels[i]]}" if train.clean_labels is not None else "") for i in order]
    how = "flagged first, then lowest p(given)" if binary else "lowest first"
    timed("distrusted", "distrusted.png", lambda p: fig.image_grid(
        train_images[order], caps, p,
        f"{tag}\nthe {len(order)} training images the method distrusts most ({signal_name}, {how})",
        marked=None if train.flipped is None else train.flipped[order],
        mark_name="the given label was flipped by the synthetic noise"))
    report = {"run": str(run), "checkpoint": str(ck), "epoch": epoch - 1, "method": saved["method"],
              "eval_split": evald.split, "eval_images": len(evald), "train_images": len(train),
              "eval_accuracy": acc, "trust_signal": signal_name, "trust_binary": binary,
              "samples_npz": samples is not None, "samples_epoch": None if samples is None else int(samples.get("epoch", -1)),
              "max_points": max_points, "seed": seed, "seconds": {k: round(v, 2) for k, v in times.items()},
              "figures": figures, "total_s": round(time.perf_counter() - t0, 2)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load_epoch(path: Path) -> int:
    """Epochs done in a checkpoint (its `epoch` entry)."""
    from robustfer.train.checkpoint import load_checkpoint

    return int(load_checkpoint(path).get("epoch", 0))


def report_grid(grid: str | Path, **kw) -> list[dict]:
    """`bench --report`: the report of every finished cell (summary.json) of a grid folder that has none yet."""
    done = []
    for s in sorted(Path(grid).glob("cells/*/summary.json")):
        cell = s.parent
        if (cell / "report" / "report.json").is_file() or not (cell / "last.pt").is_file():
            continue
        done.append(make_report(cell, **kw))
    return done
