"""The report's figures as plain functions: numpy arrays in, one PNG out (matplotlib, Agg backend), like
evaluate/'s functions on arrays. `robustfer report` (report/run.py) feeds them a run's features and labels.

- `embed_2d`: t-SNE (scikit-learn; PCA to 50 dimensions first, perplexity 30, PCA initialisation, seeded).
- `scatter_by_class`: a 2-D embedding coloured by class.
- `scatter_noise`: training features coloured by clean vs flipped label, and by the method's trust signal.
- `confusion_heatmap`: the confusion matrix, rows normalised to recall, counts in each cell.
- `recall_bars`: per-class recall with each class's image count.
- `image_grid`: face images with a caption each (given vs predicted label), coloured by a per-image flag.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def embed_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """N x 2 t-SNE embedding of N x D features (PCA to min(50, D, N) dimensions first, the usual speed-up)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float32)
    n = len(x)
    if n < 3:
        return np.zeros((n, 2), np.float32)
    k = min(50, x.shape[1], n)
    if x.shape[1] > k:
        x = PCA(k, random_state=seed).fit_transform(x)
    tsne = TSNE(2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32)


def _colours(k: int):
    plt = _plt()
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(k)]


def scatter_by_class(xy: np.ndarray, labels: np.ndarray, classes, path: Path, title: str) -> Path:
    """The embedding, one colour per class (legend with each class's count)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    for c, (name, col) in enumerate(zip(classes, _colours(len(classes)))):
        m = labels == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=col, label=f"{name} ({int(m.sum())})", alpha=0.7, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True)
    return _save(fig, path)


def scatter_noise(xy: np.ndarray, flipped: np.ndarray, path: Path, title: str, trust: np.ndarray | None = None,
                  trust_name: str = "", binary: bool = True) -> Path:
    """Two panels of one embedding of the training features: (a) clean vs flipped given label; (b) the method's
    trust signal: `binary` a flag (1 = distrusted), else a continuous value (low = distrusted), coloured."""
    plt = _plt()
    panels = 1 if trust is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6), squeeze=False)
    ax = axes[0, 0]
    f = flipped.astype(bool)
    ax.scatter(xy[~f, 0], xy[~f, 1], s=4, color="#9ca3af", alpha=0.6, linewidths=0, label=f"label kept ({int((~f).sum())})")
    ax.scatter(xy[f, 0], xy[f, 1], s=4, color="#dc2626", alpha=0.8, linewidths=0, label=f"label flipped ({int(f.sum())})")
    ax.set_title("training features: given label clean vs flipped", fontsize=10)
    ax.legend(markerscale=3, fontsize=8)
    if trust is not None:
        ax = axes[0, 1]
        known = ~np.isnan(trust)
        if binary:
            t = (trust > 0.5) & known
            ax.scatter(xy[~t, 0], xy[~t, 1], s=4, color="#9ca3af", alpha=0.6, linewidths=0, label=f"trusted ({int((~t).sum())})")
            ax.scatter(xy[t, 0], xy[t, 1], s=4, color="#2563eb", alpha=0.8, linewidths=0, label=f"flagged noisy ({int(t.sum())})")
            prec = float(f[t].mean()) if t.any() else float("nan")
            rec = float(t[f].mean()) if f.any() else float("nan")
            ax.set_title(f"the method's flag: {trust_name} (precision {prec:.2f}, recall {rec:.2f} against the flips)",
                         fontsize=10)
            ax.legend(markerscale=3, fontsize=8)
        else:
            sc = ax.scatter(xy[known, 0], xy[known, 1], s=4, c=trust[known], cmap="viridis", alpha=0.8, linewidths=0)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label=f"{trust_name} (low = distrusted)")
            ax.set_title(f"the method's trust: {trust_name}", fontsize=10)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def confusion_heatmap(cm: np.ndarray, classes, path: Path, title: str) -> Path:
    """Rows = true class, columns = predicted; colour = the row's fraction (recall on the diagonal), text = count."""
    plt = _plt()
    cm = np.asarray(cm, np.float64)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.7 * k))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.55 else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def recall_bars(recall: np.ndarray, support: np.ndarray, classes, path: Path, title: str) -> Path:
    """One bar per class (recall; NaN for a class without images drawn as 0 and marked 'n = 0')."""
    plt = _plt()
    r = np.nan_to_num(np.asarray(recall, np.float64))
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(classes), 4))
    bars = ax.bar(range(len(classes)), r, color=_colours(len(classes)))
    for b, v, n in zip(bars, r, support):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}\nn={int(n)}", ha="center", va="bottom", fontsize=7)
    valid = np.asarray(support) > 0
    mean = float(r[valid].mean()) if valid.any() else float("nan")
    ax.axhline(mean, color="0.3", lw=1, ls="--", label=f"mean-class accuracy {mean:.3f}")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("recall")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def image_grid(images: np.ndarray, captions: list[str], path: Path, title: str, marked: np.ndarray | None = None,
               cols: int = 8, mark_name: str = "") -> Path:
    """uint8 images N x C x H x W in a grid, each captioned; `marked` images' captions in red (e.g. the given
    label was flipped), with `mark_name` explaining it in the title."""
    plt = _plt()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.55 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        img = images[i]
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        red = marked is not None and bool(marked[i])
        ax.set_title(captions[i], fontsize=6.5, color="#dc2626" if red else "black")
    if marked is not None and mark_name:
        title = f"{title}\n(red: {mark_name})"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=1.2)
    return _save(fig, path)
