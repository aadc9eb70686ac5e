"""Vote-aware evaluation (methods.md §5) through the trainer, summary.json and `robustfer eval`: present
wherever the evaluated split has annotator votes (FERPlus), absent without error where it has none."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from robustfer.cli import main
from robustfer.data import load_dataset
from robustfer.evaluate import vote_metrics
from robustfer.models.predict import predict_logits
from robustfer.train import TrainConfig, train
from robustfer.train.checkpoint import load_trained

VOTE = ("vote_kl", "top_vote_prob", "plausible_accuracy")


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ferplus_run(tmp_path_factory, ferplus_root):
    out = tmp_path_factory.mktemp("votes") / "r"
    s = train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(out), epochs=1, limit=128,
                          eval_limit=64, batch_size=64, seed=2), quiet=True)
    return out, s


def test_vote_figures_in_metrics_and_summary_match_the_checkpoint(ferplus_run, ferplus_root):
    out, s = ferplus_run
    (row,) = _rows(out)
    for k in VOTE:
        assert isinstance(row[k], float) and isinstance(row[f"select_{k}"], float), k
        for block in ("last", "best", "best_mean_class", "last5"):
            assert s[block][k] == row[k], (block, k)
        assert s["best"][f"select_{k}"] == row[f"select_{k}"]
    assert row["vote_kl"] > 0 and 0 < row["top_vote_prob"] < 1
    assert row["plausible_accuracy"] >= row["accuracy"]  # majority labels always got >= 2 votes
    assert json.loads((out / "summary.json").read_text())["last"]["vote_kl"] == row["vote_kl"]
    # recomputed from last.pt on the same 64 test images (and 64 valid images, the selection split)
    model, spec, classes, _ = load_trained(out / "last.pt")
    for split, prefix in (("test", ""), ("valid", "select_")):
        data = load_dataset("ferplus", ferplus_root, split)
        data = data.subset(np.arange(64))
        logits = predict_logits(model, torch.from_numpy(np.array(data.images)), spec["size"], spec["channels"], spec["norm"])
        want = vote_metrics(torch.softmax(logits, 1).numpy(), data.votes)
        assert want["vote_images"] == 64
        for k in VOTE:
            assert row[prefix + k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (split, k)


def test_eval_reports_vote_figures_in_json_and_text(ferplus_run, ferplus_root, capsys):
    out, _ = ferplus_run
    args = ["eval", "--checkpoint", str(out / "last.pt"), "--dataset", "ferplus", "--root", str(ferplus_root),
            "--split", "valid"]
    assert main(args + ["--json"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["plausible_min_votes"] == 2 and r2["vote_images"] == r2["n"]
    assert main(args + ["--json", "--min-votes", "1"]) == 0
    r1 = json.loads(capsys.readouterr().out)
    assert r1["plausible_min_votes"] == 1 and r1["plausible_accuracy"] >= r2["plausible_accuracy"] >= r2["accuracy"]
    assert r1["vote_kl"] == r2["vote_kl"] and r1["top_vote_prob"] == r2["top_vote_prob"]
    assert r2["n"] == len(load_dataset("ferplus", ferplus_root, "valid"))  # the whole split, every image voted on
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "KL(votes||p)" in text and "top-vote probability" in text and "plausible accuracy" in text
    assert "got >= 2 votes" in text and f"{r2['vote_kl']:.4f}" in text


def _folder(root, n_train=4, n_test=2):
    for split, n in (("train", n_train), ("test", n_test)):
        for c, grey in (("happy", 60), ("sad", 120), ("neutral", 180)):
            for i in range(n):
                p = root / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (48, 48), grey + 5 * i).save(p)
    return root


def test_data_without_votes_gives_no_vote_fields_and_no_error(tmp_path, capsys):
    root = _folder(tmp_path / "faces")
    s = train(TrainConfig(dataset="folder", root=str(root), out=str(tmp_path / "r"), epochs=1, batch_size=8, seed=1),
              quiet=True)
    (row,) = _rows(tmp_path / "r")
    assert "accuracy" in row and not [k for k in row if "vote" in k]
    assert not [k for blk in ("last", "best", "best_mean_class", "last5") for k in s[blk] if "vote" in k]
    assert main(["eval", "--checkpoint", str(tmp_path / "r" / "last.pt"), "--dataset", "folder", "--root", str(root),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 6 and not [k for k in r if "vote" in k]
    assert main(["eval", "--checkpoint", str(tmp_path / "r" / "last.pt"), "--dataset", "folder", "--root", str(root)]) == 0
    assert "votes" not in capsys.readouterr().out
