"""Accuracy, mean-class accuracy (unweighted mean of per-class recall), confusion, noise detection."""
from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C counts, rows = true class, columns = predicted class."""
    pred, labels = np.asarray(pred, np.int64), np.asarray(labels, np.int64)
    return np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of correct predictions."""
    return float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each true class (NaN for a class with no samples)."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Unweighted mean of per-class recall over the classes present in the labels."""
    r = per_class_recall(cm)
    return float(np.nanmean(r)) if np.any(~np.isnan(r)) else float("nan")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the k highest scores (NLA also logs top-2)."""
    topk = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(topk == np.asarray(labels)[:, None], axis=1))) if len(labels) else float("nan")


def evaluate_predictions(pred: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                         scores: np.ndarray | None = None) -> dict:
    """All evaluation figures of one split as a JSON-ready dict (top-2 accuracy too when `scores` are given)."""
    cm = confusion_matrix(pred, labels, len(classes))
    recall = per_class_recall(cm)
    extra = {} if scores is None else {"top2_accuracy": topk_accuracy(scores, labels, 2)}
    return {**extra,
        "accuracy": accuracy(pred, labels),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "n": int(len(labels)),
    }


def mean_by_class(values: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Mean of a per-sample value for each (given) class, NaN values skipped; None for a class with none.

    Shows where a method puts its weight across classes, e.g. whether NLA's weight falls on rare ones."""
    values, labels = np.asarray(values, np.float64), np.asarray(labels, np.int64)
    ok = ~np.isnan(values)
    return {c: float(values[ok & (labels == i)].mean()) if np.any(ok & (labels == i)) else None
            for i, c in enumerate(classes)}


def noise_detection(flagged: np.ndarray, flipped: np.ndarray) -> dict:
    """Flagged-as-noisy scored against truly flipped: fraction flagged, precision, recall."""
    flagged, flipped = np.asarray(flagged, bool), np.asarray(flipped, bool)
    tp = int(np.sum(flagged & flipped))
    nf, nt = int(flagged.sum()), int(flipped.sum())
    return {
        "flagged_fraction": float(flagged.mean()) if len(flagged) else float("nan"),
        "noise_precision": tp / nf if nf else float("nan"),
        "noise_recall": tp / nt if nt else float("nan"),
    }
