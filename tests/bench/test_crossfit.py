"""Cross-fitting folds and cleanlab scored beside the methods' flags."""
import csv

import numpy as np

from robustfer.bench import make_grid, run_bench
from robustfer.bench.crossfit import cleanlab_flags, f1, out_of_sample
from robustfer.train.data import fold_indices


def test_folds_cover_every_image_once_and_are_seeded():
    folds = fold_indices(103, 4, 7)
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(103)) and {len(f) for f in folds} <= {25, 26}
    assert all(np.array_equal(a, b) for a, b in zip(folds, fold_indices(103, 4, 7)))
    assert not np.array_equal(folds[0], fold_indices(103, 4, 8)[0])


def test_cleanlab_finds_labels_the_out_of_sample_model_disagrees_with():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 400)
    probs = np.full((400, 4), 0.05)
    probs[np.arange(400), true] = 0.85
    given = true.copy()
    flipped = rng.random(400) < 0.2
    given[flipped] = (true[flipped] + 1) % 4
    flags = cleanlab_flags(given, probs)
    tp = np.sum(flags & flipped)
    assert tp / flags.sum() > 0.95 and tp / flipped.sum() > 0.95
    assert f1(0.5, 1.0) == 2 / 3 and f1(None, 0.2) is None


def test_bench_scores_cleanlab_beside_the_methods(tmp_path, ferplus_root):
    raw = {"methods": ["ce"], "noise": [0.3], "seeds": [1],
           "train": {"dataset": "ferplus", "root": str(ferplus_root), "epochs": 1, "limit": 160, "eval_limit": 64,
                     "batch_size": 32},
           "cleanlab": {"folds": 2}}
    out = tmp_path / "b"
    rows = run_bench(make_grid(raw), out, live=False, echo=lambda *a: None)
    assert [r["cell"] for r in rows] == ["ce_symmetric0.3_s1"]  # the folds are not table rows
    folds = [out / "cells" / f"cleanlab-f{i}of2_symmetric0.3_s1" for i in range(2)]
    d = out_of_sample([f / "heldout.npz" for f in folds])
    trained = (out / "cells" / "ce_symmetric0.3_s1" / "train_images.txt").read_text().split()
    assert sorted(d["files"].tolist()) == sorted(trained)  # the folds predict exactly the cells' training images
    for f in folds:  # each fold model never trained on what it predicts
        held = set(np.load(f / "heldout.npz")["files"].tolist())
        assert not held & set((f / "train_images.txt").read_text().split())
    assert np.allclose(d["probs"].sum(1), 1, atol=1e-5)
    with open(out / "noise_detection.csv") as fh:
        det = list(csv.DictReader(fh))
    assert det[0]["detector"] == "cleanlab (2-fold CE, 1 epochs)"
    flags = cleanlab_flags(d["labels"], d["probs"])
    assert float(det[0]["flagged_fraction"]) == flags.mean()
    assert "Noise detection" in (out / "results.md").read_text()
