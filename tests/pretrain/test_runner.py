"""`robustfer pretrain` end to end on a few real FERPlus images: run folder, `train --init`, exact resume,
labels never read, one-line errors, and a bench grid's label-free [pretrain] stage."""
import json
import shlex
from dataclasses import asdict

import pytest
import torch

from robustfer.bench.grid import command_line, expand, make_grid, pretrain_config, init_of, train_argv
from robustfer.bench.run import check_disjoint, run_one
from robustfer.cli import build_parser, main
from robustfer.errors import RobustferError
from robustfer.models import create_backbone, load_init
from robustfer.pretrain import PretrainConfig, pretrain
from robustfer.pretrain import runner as runner_mod
from robustfer.pretrain.runner import pretrain_argv
from robustfer.train import TrainConfig
from robustfer.train.trainer import Run

CASES = {"simsiam": dict(objective="simsiam", model="compact_s"), "mae": dict(objective="mae", model="vit_s")}


def _cfg(root, out, objective="simsiam", **kw):
    base = dict(dataset="ferplus", root=str(root), out=str(out), limit=64, batch_size=32, epochs=2, seed=5,
                threads=1, **CASES[objective])
    base.update(kw)
    return PretrainConfig(**base)


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s")
    return rows


def test_run_folder_contents(tmp_path, ferplus_root):
    s = pretrain(_cfg(ferplus_root, tmp_path / "r", offset=100), quiet=True)
    run = tmp_path / "r"
    for f in ("config.json", "last.pt", "metrics.jsonl", "summary.json", "train_images.txt"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["optimizer"] == "sgd" and cfg["lr"] == pytest.approx(0.05 * 32 / 256) and cfg["labels_used"] is False
    assert cfg["train_images"] == 64 and cfg["steps_per_epoch"] == 2
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [0, 1] and {"loss", "lr", "feature_std"} <= set(rows[0])
    assert s["loss_last"] == rows[-1]["loss"] and s["feature_std_uniform"] == pytest.approx(512 ** -0.5)
    listed = (run / "train_images.txt").read_text().splitlines()
    from robustfer.data import load_dataset
    assert listed == load_dataset("ferplus", ferplus_root, "train").files[100:164]  # --offset 100 --limit 64
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["kind"] == "pretrain" and ck["epoch"] == 2 and {"optimizer", "scheduler", "rng", "history"} <= set(ck)
    assert set(ck["model"]) == set(create_backbone("compact_s").state_dict())  # the bare backbone


@pytest.mark.parametrize("objective", ["simsiam", "mae"])
def test_train_init_loads_the_pretrained_backbone(tmp_path, ferplus_root, objective):
    pretrain(_cfg(ferplus_root, tmp_path / "pre", objective, epochs=1), quiet=True)
    saved = torch.load(tmp_path / "pre" / "last.pt", weights_only=False)["model"]
    for init in (tmp_path / "pre" / "last.pt", tmp_path / "pre"):  # the checkpoint or its run folder
        run = Run(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path / "t"), init=str(init),
                              model=CASES[objective]["model"], limit=32, eval_limit=32, select_split="test"), quiet=True)
        loaded = run.model.backbone.state_dict()
        assert run.init_skipped == []
        for k, v in saved.items():
            assert torch.equal(loaded[k].cpu(), v), k
    fresh = create_backbone(CASES[objective]["model"])
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in saved.items() if v.is_floating_point())
    load_init(fresh, tmp_path / "pre")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("objective", ["simsiam", "mae"])
def test_resume_matches_uninterrupted_run(tmp_path, ferplus_root, objective):
    pretrain(_cfg(ferplus_root, tmp_path / "full", objective), quiet=True)
    pretrain(_cfg(ferplus_root, tmp_path / "cut", objective), quiet=True, stop_after=1)  # killed after epoch 1
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert main(["pretrain", "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    for k in a["objective"]:
        assert torch.equal(a["objective"][k], b["objective"][k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_labels_are_never_read(tmp_path, ferplus_root, monkeypatch):
    """The reader's labels, votes and soft targets raise if touched: pretraining still runs, and gives what
    an ordinary run gives."""
    real = runner_mod.load_dataset

    class ImagesOnly:
        def __init__(self, data):
            self._data = data

        def __getattr__(self, name):
            if name in ("images", "files"):
                return getattr(self._data, name)
            raise AssertionError(f"pretrain touched the data set's {name!r}")

    monkeypatch.setattr(runner_mod, "load_dataset", lambda *a, **kw: ImagesOnly(real(*a, **kw)))
    pretrain(_cfg(ferplus_root, tmp_path / "guarded", epochs=1), quiet=True)
    monkeypatch.setattr(runner_mod, "load_dataset", real)
    pretrain(_cfg(ferplus_root, tmp_path / "plain", epochs=1), quiet=True)
    assert _rows(tmp_path / "guarded") == _rows(tmp_path / "plain")


@pytest.mark.parametrize("argv, msg", [
    (["--objective", "mae", "--model", "compact_s"], "needs a ViT backbone"),
    (["--objective", "simsiam", "--mask-ratio", "0.5"], "option of another objective"),
    (["--objective", "simsiam", "--model", "nope"], "unknown model"),
    (["--objective", "simsiam", "--offset", "1000000"], "need at least 2"),
])
def test_errors_are_one_line(tmp_path, ferplus_root, capsys, argv, msg):
    code = main(["pretrain", "--dataset", "ferplus", "--root", str(ferplus_root), "--out", str(tmp_path / "r"),
                 "--threads", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and "\n" not in err and "Traceback" not in err


def test_refuses_to_overwrite_and_auto_resume_skips_a_finished_run(tmp_path, ferplus_root):
    pretrain(_cfg(ferplus_root, tmp_path / "r", epochs=1), quiet=True)
    with pytest.raises(RobustferError, match="already holds a run"):
        pretrain(_cfg(ferplus_root, tmp_path / "r", epochs=1), quiet=True)
    assert pretrain(_cfg(ferplus_root, tmp_path / "r", epochs=1), quiet=True, auto_resume=True)["epochs"] == 1
    with pytest.raises(RobustferError, match="other settings"):
        pretrain(_cfg(ferplus_root, tmp_path / "r", epochs=3), quiet=True, auto_resume=True)


def _grid(root, **pre):
    return make_grid({"methods": ["ce"], "seeds": [1], "controls": False,
                      "train": {"dataset": "ferplus", "root": str(root), "limit": 64, "epochs": 1, "eval_limit": 32},
                      "pretrain": {"objective": "simsiam", "offset": 500, "limit": 64, "epochs": 1, "batch_size": 32,
                                   **pre}})


def test_bench_pretrain_stage_runs_robustfer_pretrain(tmp_path, ferplus_root):
    grid = _grid(ferplus_root)
    stage = pretrain_config(grid, tmp_path)
    assert isinstance(stage, PretrainConfig) and stage.out == str(tmp_path / "pretrain")
    argv = train_argv(stage)
    assert argv[0] == "pretrain" and argv == pretrain_argv(stage) and "--auto-resume" in argv
    assert shlex.split(command_line(stage))[3:5] == ["pretrain", "--dataset"]
    args = build_parser().parse_args(argv)  # the command line rebuilds the same config
    rebuilt = PretrainConfig(**{k: getattr(args, k) for k in asdict(stage)})
    assert rebuilt == stage
    cells = expand(grid, init_of(grid, tmp_path))
    assert cells[0].options["init"] == str(tmp_path / "pretrain" / "last.pt")
    assert run_one(stage, 1) == 0  # the stage as bench runs it: a child process
    assert (tmp_path / "pretrain" / "summary.json").exists()
    assert "none of them among" in check_disjoint(init_of(grid, tmp_path), cells, tmp_path)
    # a label-free stage may see the cells' training images (images 0..63 here): it never read their labels
    assert "label-free" in _disjoint_after_stage(_grid(ferplus_root, offset=0), tmp_path / "o")
    # ... but never the images they select on (FERPlus valid) or are tested on
    with pytest.raises(RobustferError, match="was trained on .* selects or tests on"):
        _disjoint_after_stage(_grid(ferplus_root, offset=0, train_split="valid"), tmp_path / "v")


def _disjoint_after_stage(grid, out):
    stage = pretrain_config(grid, out)
    pretrain(stage, quiet=True)
    return check_disjoint(init_of(grid, out), expand(grid, init_of(grid, out)), out)


@pytest.mark.parametrize("pre, msg", [({"objective": "byol"}, "unknown objective"),
                                      ({"method": "ce"}, "not pretrain options"),
                                      ({"out": "x"}, "not pretrain options")])
def test_bench_pretrain_stage_options_are_checked(ferplus_root, pre, msg):
    with pytest.raises(RobustferError, match=msg):
        _grid(ferplus_root, **pre)
