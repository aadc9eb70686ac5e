"""`robustfer report` (robustfer/report): every figure is written as a valid, non-blank PNG; the trust signal and
the 'distrusts most' order are the documented ones; samples.npz holds the last epoch's per-sample statistics;
t-SNE keeps far-apart clusters apart."""
import json

import numpy as np
import pytest
from PIL import Image

from robustfer.cli import main
from robustfer.report import figures as fig
from robustfer.report.run import distrust_order, trust_signal


def assert_png(path):
    """A valid PNG whose pixels are not all one value (something was drawn)."""
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        a = np.asarray(im.convert("L"), np.float64)
    assert a.shape[0] > 100 and a.shape[1] > 100 and a.var() > 50, f"{path.name} looks blank (variance {a.var():.1f})"


def test_each_figure_function_writes_a_non_blank_png(tmp_path):
    rng = np.random.default_rng(0)
    classes = ("a", "b", "c")
    labels = rng.integers(0, 3, 90)
    xy = rng.normal(size=(90, 2)) + labels[:, None] * 4
    flipped = rng.random(90) < 0.3
    cm = np.array([[30, 2, 1], [5, 20, 5], [0, 0, 27]])
    paths = [
        fig.scatter_by_class(xy, labels, classes, tmp_path / "a.png", "by class"),
        fig.scatter_noise(xy, flipped, tmp_path / "b.png", "noise", flipped.astype(float), "flagged_noisy", True),
        fig.scatter_noise(xy, flipped, tmp_path / "c.png", "noise", rng.random(90), "weight", False),
        fig.confusion_heatmap(cm, classes, tmp_path / "d.png", "confusion"),
        fig.recall_bars(np.array([0.9, 0.6, np.nan]), np.array([33, 30, 0]), classes, tmp_path / "e.png", "recall"),
        fig.image_grid(rng.integers(0, 255, (10, 1, 48, 48), dtype=np.uint8), [f"given a\npred b{i}" for i in range(10)],
                       tmp_path / "f.png", "grid", marked=np.arange(10) % 2 == 0, mark_name="flipped"),
    ]
    for p in paths:
        assert_png(p)


def test_tsne_keeps_far_apart_clusters_apart():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (60, 64)), rng.normal(30, 1, (60, 64))])
    xy = fig.embed_2d(x, seed=0)
    assert xy.shape == (120, 2)
    a, b = xy[:60], xy[60:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    spread = max(np.linalg.norm(a - a.mean(0), axis=1).max(), np.linalg.norm(b - b.mean(0), axis=1).max())
    assert gap > 2 * spread


def test_trust_signal_order_and_distrust_order():
    labels = np.array([0, 1, 2, 0])
    p_given = np.array([0.9, 0.2, 0.5, 0.1])
    s = {"labels": labels, "stat_flagged_noisy": np.array([0.0, 1.0, 1.0, np.nan]), "stat_weight": np.ones(4)}
    sig, name, binary = trust_signal(s, labels, p_given)
    assert name == "flagged_noisy" and binary
    assert distrust_order(sig, binary, p_given).tolist() == [1, 2, 0, 3]   # flagged (lowest p first), then the rest, NaN last
    sig, name, binary = trust_signal({"labels": labels, "stat_weight": np.array([0.5, 0.1, np.nan, 0.9])}, labels, p_given)
    assert name == "weight" and not binary and distrust_order(sig, binary, p_given).tolist() == [1, 0, 3, 2]
    # no samples.npz, or one of other training labels (another run's): the model's p(given label)
    for samples in (None, {"labels": np.array([1, 1, 2, 0]), "stat_flagged_noisy": np.ones(4)}):
        sig, name, binary = trust_signal(samples, labels, p_given)
        assert name.startswith("p(given") and not binary and distrust_order(sig, binary, p_given).tolist() == [3, 1, 2, 0]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, ferplus_root):
    from robustfer.train import TrainConfig, train

    run = tmp_path_factory.mktemp("report") / "ncctfer"
    train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(run), method="ncctfer", epochs=2, limit=96,
                      batch_size=32, seed=1, noise="symmetric:0.3", method_options={"warmup": 1}, eval_split="valid",
                      eval_limit=80, select_split="test"), quiet=True)
    return run


def test_samples_npz_holds_the_last_epochs_statistics(noisy_run):
    import csv

    with np.load(noisy_run / "samples.npz") as z:
        s = {k: z[k] for k in z.files}
    assert int(s["epoch"]) == 1 and len(s["labels"]) == 96
    rows = list(csv.DictReader(open(noisy_run / "noise.csv")))
    assert s["flipped"].astype(int).tolist() == [int(r["flipped"]) for r in rows][:96]
    flag = s["stat_flagged_noisy"]
    assert set(np.unique(flag[~np.isnan(flag)])) <= {0.0, 1.0} and np.isfinite(s["stat_label_prob"]).sum() > 0


def test_report_writes_every_figure(noisy_run, capsys):
    assert main(["report", str(noisy_run), "--max-points", "80", "--top", "12"]) == 0
    assert "5 figures" in capsys.readouterr().out
    rep = json.loads((noisy_run / "report" / "report.json").read_text())
    assert set(rep["figures"]) == {"confusion", "recall", "tsne_test", "tsne_train_noise", "distrusted"}
    assert rep["trust_signal"] == "flagged_noisy" and rep["samples_epoch"] == 1 and rep["epoch"] == 1
    assert rep["eval_images"] == 80 and rep["train_images"] == 96
    for f in rep["figures"].values():
        assert f["seconds"] >= 0
        assert_png(noisy_run / "report" / f["file"])


def test_report_of_a_clean_run_skips_the_noise_plot_and_uses_p_given(noisy_run, tmp_path, capsys):
    import shutil

    from robustfer.train.config import TrainConfig

    run = tmp_path / "clean"
    shutil.copytree(noisy_run, run, ignore=shutil.ignore_patterns("report", "samples.npz"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["noise"] = None                                  # the same weights, read as a run on the clean labels
    (run / "config.json").write_text(json.dumps(cfg))
    assert TrainConfig.load(run / "config.json").noise is None
    assert main(["report", str(run), "--checkpoint", "best", "--max-points", "60", "--out", str(tmp_path / "r")]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "tsne_train_noise" not in rep["figures"] and rep["trust_signal"].startswith("p(given")
    assert rep["checkpoint"].endswith("best.pt")
    assert_png(tmp_path / "r" / "distrusted.png")


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a train run folder" in err


def test_bench_report_makes_each_finished_cells_report_once(noisy_run, tmp_path):
    import shutil

    from robustfer.report import report_grid

    for name in ("a_s1", "b_s1"):
        shutil.copytree(noisy_run, tmp_path / "cells" / name, ignore=shutil.ignore_patterns("report"))
    (tmp_path / "cells" / "b_s1" / "summary.json").unlink()            # an unfinished cell: no report
    done = report_grid(tmp_path, max_points=50, top=4, quiet=True)
    assert [d["run"] for d in done] == [str(tmp_path / "cells" / "a_s1")]
    assert (tmp_path / "cells" / "a_s1" / "report" / "report.json").is_file()
    assert not (tmp_path / "cells" / "b_s1" / "report").exists()
    assert report_grid(tmp_path, max_points=50, quiet=True) == []       # a rerun keeps the finished reports
