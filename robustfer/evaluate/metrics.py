"""Accuracy, mean-class accuracy (unweighted mean of per-class recall), confusion, noise detection,
vote-aware figures against the annotators' votes (FERPlus)."""
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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably (max subtracted) in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(1, keepdims=True)) if z.size else z
    return z / z.sum(1, keepdims=True) if z.size else z


VOTE_EPS = 1e-12  # the floor p is clipped at inside KL(d||p): a class the model rules out costs log(1/eps), not inf


def vote_metrics(probs: np.ndarray, votes: np.ndarray, min_votes: int = 2) -> dict:
    """Figures against the annotators' raw votes (methods.md §5, vote-aware evaluation).

    probs: N x C model probabilities; votes: N x V vote counts, V >= C, whose first C columns are the C
    classes in `probs`' order (further columns, FERPlus's unknown and not-a-face, are ignored). With
    c_ij the votes for class j, d_ij = c_ij / sum_k c_ik the vote distribution over the C classes, and
    only the images with at least one class vote scored (the rest are skipped):
      vote_kl = mean_i sum_j d_ij (log d_ij - log max(p_ij, 1e-12)), with 0 log 0 = 0 (nats; 0 iff p_i = d_i);
      top_vote_prob = mean_i mean_{j in T_i} p_ij, T_i = argmax_j c_ij (all the tied top classes: the
        mean of the model's probability over them);
      plausible_accuracy = mean_i [c_i,argmax_j p_ij >= min_votes]: the predicted class received at least
        T = min_votes votes (default 2: FERPlus's own rule drops single votes as outliers; with
        FERPlus's `majority` labels a correct prediction is always plausible at T = 2).
    Also gives `vote_images` (images scored) and `plausible_min_votes` (T). NaN figures when none is scored."""
    probs = np.asarray(probs, np.float64)
    votes = np.asarray(votes, np.float64)
    n, c = probs.shape
    if votes.ndim != 2 or len(votes) != n or votes.shape[1] < c:
        raise ValueError(f"votes of shape {votes.shape} do not fit probabilities of shape {probs.shape}: "
                         "need N x V with V >= C")
    counts = votes[:, :c]
    total = counts.sum(1)
    ok = total > 0
    counts, probs = counts[ok], probs[ok]
    out = {"vote_kl": float("nan"), "top_vote_prob": float("nan"), "plausible_accuracy": float("nan"),
           "vote_images": int(ok.sum()), "plausible_min_votes": int(min_votes)}
    if not ok.any():
        return out
    d = counts / total[ok, None]
    logp = np.log(np.clip(probs, VOTE_EPS, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(d > 0, d * (np.log(np.where(d > 0, d, 1.0)) - logp), 0.0)
    top = counts == counts.max(1, keepdims=True)
    picked = counts[np.arange(len(counts)), probs.argmax(1)]
    out.update(vote_kl=float(terms.sum(1).mean()),
               top_vote_prob=float(((probs * top).sum(1) / top.sum(1)).mean()),
               plausible_accuracy=float(np.mean(picked >= min_votes)))
    return out


def evaluate_predictions(pred: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                         scores: np.ndarray | None = None, votes: np.ndarray | None = None,
                         min_votes: int = 2) -> dict:
    """All evaluation figures of one split as a JSON-ready dict: top-2 accuracy too when `scores` (logits)
    are given, and the vote figures of `vote_metrics` on softmax(scores) when `votes` (N x V, first C
    columns the classes) are given and have rows."""
    cm = confusion_matrix(pred, labels, len(classes))
    recall = per_class_recall(cm)
    extra = {} if scores is None else {"top2_accuracy": topk_accuracy(scores, labels, 2)}
    if votes is not None and len(votes) and scores is not None:
        extra.update(vote_metrics(softmax(scores), votes, min_votes))
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
