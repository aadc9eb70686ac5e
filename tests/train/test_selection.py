"""Model selection on a validation split, the noise file of a run, and the idempotent --auto-resume."""
import json

import numpy as np
import pytest

from robustfer.data.noise import read_noise_csv
from robustfer.errors import RobustferError
from robustfer.train import TrainConfig, train
from robustfer.train.data import holdout_indices, load_splits
from robustfer.train.trainer import summarize


def _cfg(root, out, **kw):
    base = dict(dataset="ferplus", root=str(root), out=str(out), epochs=3, limit=192, batch_size=64, seed=3,
                noise="symmetric:0.3", eval_limit=200)
    base.update(kw)
    return TrainConfig(**base)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_best_is_the_epoch_of_best_validation_accuracy_and_reports_test_there():
    rows = [{"epoch": e, "accuracy": a, "mean_class_accuracy": m, "select_accuracy": v,
             "select_mean_class_accuracy": vm, "images_per_s": 1.0}
            for e, (a, m, v, vm) in enumerate([(0.5, 0.4, 0.6, 0.3), (0.9, 0.5, 0.5, 0.6), (0.7, 0.45, 0.7, 0.2)])]
    s = summarize(rows, 1.0, "valid")
    assert s["best"]["epoch"] == 2 and s["best"]["accuracy"] == 0.7 and s["best"]["select_accuracy"] == 0.7
    assert s["best_mean_class"]["epoch"] == 1
    assert s["selected_on"] == "valid" and s["last"]["epoch"] == 2


def test_ferplus_selects_on_valid_and_each_epoch_has_both_splits(tmp_path, ferplus_root):
    import torch

    s = train(_cfg(ferplus_root, tmp_path / "r"), quiet=True)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["select_split"] == "valid" and cfg["eval_split"] == "test" and cfg["select_images"] == 200
    rows = _rows(tmp_path / "r")
    assert all({"select_accuracy", "accuracy"} <= set(r) for r in rows)
    assert any(r["select_accuracy"] != r["accuracy"] for r in rows)  # two different splits
    best = max(rows, key=lambda r: r["select_accuracy"])
    assert s["best"]["epoch"] == best["epoch"] and s["best"]["accuracy"] == best["accuracy"]
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=False)["epoch"] == best["epoch"] + 1


def test_holdout_is_seeded_disjoint_and_written(tmp_path, ferplus_root):
    a, b = holdout_indices(1000, 0.1, 5), holdout_indices(1000, 0.1, 5)
    assert np.array_equal(a, b) and len(a) == 100 and not np.array_equal(a, holdout_indices(1000, 0.1, 6))
    cfg = _cfg(ferplus_root, tmp_path / "h", select_split="holdout", holdout=0.25, epochs=1)
    tr, sel, ev = load_splits(cfg)
    assert len(sel) == 48 and len(tr) == 144 and not set(tr.files) & set(sel.files)
    whole, *_ = load_splits(_cfg(ferplus_root, tmp_path / "x"))
    labels = dict(zip(whole.files, whole.labels))  # the held-out part keeps the given (noisy) labels
    assert all(labels[f] == y for f, y in zip(sel.files, sel.labels))
    train(cfg, quiet=True)
    run = tmp_path / "h"
    assert (run / "select_images.txt").read_text().split() == sel.files
    assert (run / "train_images.txt").read_text().split() == tr.files
    assert json.loads((run / "summary.json").read_text())["selected_on"] == "holdout"


def test_train_writes_its_noisy_labels_and_flip_mask(tmp_path, ferplus_root):
    cfg = _cfg(ferplus_root, tmp_path / "n", epochs=1)
    train(cfg, quiet=True)
    tr, *_ = load_splits(cfg)
    back = read_noise_csv(tmp_path / "n" / "noise.csv", tr)
    assert np.array_equal(back.labels, tr.labels) and np.array_equal(back.flipped, tr.flipped)
    assert 0.15 < tr.flipped.mean() < 0.45
    train(_cfg(ferplus_root, tmp_path / "c", epochs=1, noise=None), quiet=True)
    assert not (tmp_path / "c" / "noise.csv").exists()  # no synthetic noise, no flip mask


def test_auto_resume_skips_finished_continues_killed_and_refuses_changed(tmp_path, ferplus_root):
    full = train(_cfg(ferplus_root, tmp_path / "full"), quiet=True)
    train(_cfg(ferplus_root, tmp_path / "cut"), quiet=True, stop_after=1)
    cont = train(_cfg(ferplus_root, tmp_path / "cut"), quiet=True, auto_resume=True)
    assert cont["last"] == full["last"] and cont["best"] == full["best"]
    mtime = (tmp_path / "full" / "last.pt").stat().st_mtime_ns
    again = train(_cfg(ferplus_root, tmp_path / "full", threads=1), quiet=True, auto_resume=True)
    assert again == full and (tmp_path / "full" / "last.pt").stat().st_mtime_ns == mtime  # nothing retrained
    with pytest.raises(RobustferError, match="lr: saved 0.05, asked 0.01"):
        train(_cfg(ferplus_root, tmp_path / "full", lr=0.01), quiet=True, auto_resume=True)
    with pytest.raises(RobustferError, match="already holds a run"):
        train(_cfg(ferplus_root, tmp_path / "full"), quiet=True)
