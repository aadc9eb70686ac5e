"""`robustfer audit`: cleanlab's ranking on out-of-sample probabilities, the csv, the contact sheet, the
checkpoint and cross-fitting paths, and the figures against a known flip mask."""
import csv

import numpy as np
import pytest

from robustfer.cli import main
from robustfer.data.classes import FERPLUS
from robustfer.errors import RobustferError
from robustfer.infer.audit import FIELDS, noise_scores, rank, write_csv
from robustfer.train import TrainConfig, train


def _fake(n=400, flips=20, seed=0):
    """Confident, correct out-of-sample probabilities; `flips` labels moved to a class the model is sure is wrong."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, len(FERPLUS), n)
    probs = np.full((n, len(FERPLUS)), 0.02)
    probs[np.arange(n), true] = 1 - 0.02 * (len(FERPLUS) - 1)
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    given = true.copy()
    flipped_idx = rng.choice(n, flips, replace=False)
    given[flipped_idx] = (true[flipped_idx] + 1 + rng.integers(0, len(FERPLUS) - 1, flips)) % len(FERPLUS)
    flipped = given != true
    files = [f"FER2013Train/fer{i:07d}.png" for i in range(n)]
    return given, probs, files, true, flipped


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_flipped_labels_rank_first_and_csv_format(tmp_path):
    given, probs, files, true, flipped = _fake()
    rows = rank(given, probs, files, FERPLUS, flipped)
    k = int(flipped.sum())
    assert all(r["flipped"] for r in rows[:k]) and not any(r["flipped"] for r in rows[k:])
    assert all(r["issue"] for r in rows[:k])
    assert {r["suggested_label"] for r in rows[:k]} <= set(FERPLUS)
    by_file = {f: FERPLUS[t] for f, t in zip(files, true)}
    assert all(r["suggested_label"] == by_file[r["image"]] for r in rows)  # argmax = the true class here
    path = write_csv(rows, tmp_path / "a.csv")
    table = _read(path)
    assert tuple(table[0]) == FIELDS == ("image", "given_label", "suggested_label", "score")
    body = table[1:]
    assert len(body) == len(files) and {r[0] for r in body} == set(files)
    scores = [float(r[3]) for r in body]
    assert scores == sorted(scores, reverse=True)
    assert all(r[1] in FERPLUS and r[2] in FERPLUS for r in body)
    assert all(r[1] != r[2] for r in body[:k])
    s = noise_scores(rows)
    assert s["top_k"] == 40 and s["top_precision"] == pytest.approx(0.5) and s["top_recall"] == 1.0
    assert noise_scores(rank(given, probs, files, FERPLUS)) is None


def test_rank_rejects_mismatched_probabilities():
    with pytest.raises(RobustferError, match="do not match"):
        rank(np.zeros(4, int), np.full((4, 3), 1 / 3), ["a"] * 4, FERPLUS)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, ferplus_root):
    out = tmp_path_factory.mktemp("ck") / "run"
    train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(out), epochs=1, limit=64, eval_limit=32,
                      batch_size=32, seed=1, device="cpu"), quiet=True)
    return out / "last.pt"


def test_checkpoint_path_with_noise_and_sheet(tmp_path, ferplus_root, tiny_ckpt, capsys):
    out = tmp_path / "audit.csv"
    rc = main(["audit", "--dataset", "ferplus", "--root", str(ferplus_root), "--out", str(out), "--checkpoint",
               str(tiny_ckpt), "--limit", "200", "--noise", "symmetric:0.3", "--top", "16", "--device", "cpu"])
    assert rc == 0
    cap = capsys.readouterr()
    text = cap.out
    assert "top 10% (20 images) precision" in text and "recall" in text
    assert "in-sample" in cap.err  # the fixture's model saw FERPlus's training split
    table = _read(out)
    assert tuple(table[0]) == FIELDS and len(table) == 201
    assert all(r[0].startswith("FER2013Train/") and (ferplus_root / r[0]).is_file() for r in table[1:6])
    assert all(r[1] in FERPLUS and r[2] in FERPLUS for r in table[1:])
    scores = [float(r[3]) for r in table[1:]]
    assert scores == sorted(scores, reverse=True)
    sheet = out.with_suffix(".png")
    assert sheet.is_file() and sheet.stat().st_size > 5000
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crossfit_path_end_to_end_and_resumes(tmp_path, ferplus_root, capsys):
    out = tmp_path / "cf.csv"
    args = ["audit", "--dataset", "ferplus", "--root", str(ferplus_root), "--out", str(out), "--folds", "2",
            "--epochs", "1", "--limit", "120", "--noise", "symmetric:0.3", "--sheet", str(tmp_path / "s.png"),
            "--device", "cpu", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2-fold cross-fitted CE (1 epochs)" in text and "top 10% (12 images) precision" in text
    table = _read(out)
    assert tuple(table[0]) == FIELDS and len(table) == 121
    runs = sorted((tmp_path / "cf_audit_runs").glob("*/fold*of2"))
    assert [r.name for r in runs] == ["fold0of2", "fold1of2"] and all((r / "heldout.npz").is_file() for r in runs)
    assert (tmp_path / "s.png").stat().st_size > 5000
    mtime = (runs[0] / "last.pt").stat().st_mtime
    assert main(args) == 0  # finished folds are reused, not retrained
    assert (runs[0] / "last.pt").stat().st_mtime == mtime and _read(out) == table


def test_errors_are_one_line(tmp_path, ferplus_root, tiny_ckpt, capsys, monkeypatch):
    base = ["audit", "--dataset", "ferplus", "--out", str(tmp_path / "x.csv")]
    assert main(base + ["--root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(base + ["--root", str(ferplus_root), "--folds", "1"]) == 2
    assert "--folds 1" in capsys.readouterr().err
    assert main(base + ["--root", str(ferplus_root), "--checkpoint", str(tmp_path / "no.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import robustfer.train.checkpoint as ckmod

    real = ckmod.load_trained
    monkeypatch.setattr(ckmod, "load_trained", lambda p, device="cpu": (*real(p, device)[:2], ("a", "b", "c"), {}))
    assert main(base + ["--root", str(ferplus_root), "--checkpoint", str(tiny_ckpt), "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert "same class list" in err and len(err.strip().splitlines()) == 1
