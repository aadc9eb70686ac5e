import json

import pytest
import torch

from robustfer.errors import RobustferError
from robustfer.methods.ce import CE
from robustfer.train import TrainConfig, train


def _cfg(root, out, **kw):
    base = dict(dataset="ferplus", root=str(root), out=str(out), epochs=2, limit=192, batch_size=64, seed=3,
                noise="symmetric:0.3", eval_split="valid", eval_limit=256)
    base.update(kw)
    return TrainConfig(**base)


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s")
    return rows


def test_run_folder_contents(tmp_path, ferplus_root):
    s = train(_cfg(ferplus_root, tmp_path / "r"), quiet=True)
    run = tmp_path / "r"
    for f in ("config.json", "last.pt", "best.pt", "metrics.jsonl", "summary.json", "train_images.txt"):
        assert (run / f).is_file(), f
    assert list(run.glob("events.out.tfevents.*"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["optimizer"] == "sgd" and cfg["schedule"] == "onecycle" and cfg["classes"][0] == "neutral"
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"train_loss", "accuracy", "mean_class_accuracy", "lr", "noise_rate"} <= set(rows[0])
    assert s["last"]["accuracy"] == rows[-1]["accuracy"]
    assert s["best"]["accuracy"] == max(r["accuracy"] for r in rows)
    assert set(s) >= {"last", "best", "last5", "wall_s", "images_per_s"}


def test_resume_matches_uninterrupted_run(tmp_path, ferplus_root):
    train(_cfg(ferplus_root, tmp_path / "full", epochs=3), quiet=True)
    train(_cfg(ferplus_root, tmp_path / "cut", epochs=3), quiet=True, stop_after=1)  # killed after epoch 1
    assert not (tmp_path / "cut" / "summary.json").exists()
    train(TrainConfig(dataset="", root="", out=str(tmp_path / "cut")), resume=True, quiet=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_refuses_to_overwrite_a_run(tmp_path, ferplus_root):
    train(_cfg(ferplus_root, tmp_path / "r", epochs=1), quiet=True)
    with pytest.raises(RobustferError, match="already holds a run"):
        train(_cfg(ferplus_root, tmp_path / "r", epochs=1), quiet=True)


def test_nan_loss_is_a_clear_error_and_keeps_last_good_epoch(tmp_path, ferplus_root, monkeypatch):
    real = CE.loss

    def nan_in_epoch_1(self, model, batch, state):
        loss, stats = real(self, model, batch, state)
        return (loss * float("nan") if state.epoch == 1 else loss), stats

    monkeypatch.setattr(CE, "loss", nan_in_epoch_1)
    with pytest.raises(RobustferError, match=r"loss became nan at epoch 1 step 0.*last.pt keeps the last good epoch"):
        train(_cfg(ferplus_root, tmp_path / "r"), quiet=True)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert ck["epoch"] == 1 and not list((tmp_path / "r").glob(".*tmp*"))


def test_noise_is_seeded_and_recorded(tmp_path, ferplus_root):
    train(_cfg(ferplus_root, tmp_path / "a", epochs=1), quiet=True)
    rate = _rows(tmp_path / "a")[0]["noise_rate"]
    assert 0.2 < rate < 0.4
    ck = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert ck["config"]["noise"] == "symmetric:0.3" and ck["config"]["seed"] == 3


def test_eval_every_skips_epochs_but_always_evaluates_the_last(tmp_path, ferplus_root):
    s = train(_cfg(ferplus_root, tmp_path / "r", epochs=3, eval_every=2, noise=None), quiet=True)
    rows = _rows(tmp_path / "r")
    assert [("accuracy" in r) for r in rows] == [False, True, True]
    assert all("train_loss" in r for r in rows)
    assert s["epochs"] == 3 and s["last"]["epoch"] == 2
    assert s["best"]["accuracy"] == max(rows[1]["accuracy"], rows[2]["accuracy"])


def test_ema_is_evaluated_saved_and_resumed_exactly(tmp_path, ferplus_root):
    from robustfer.train.checkpoint import load_trained

    cfg = dict(epochs=3, ema=0.9, noise=None)
    train(_cfg(ferplus_root, tmp_path / "full", **cfg), quiet=True)
    train(_cfg(ferplus_root, tmp_path / "cut", **cfg), quiet=True, stop_after=1)
    train(TrainConfig(dataset="", root="", out=str(tmp_path / "cut")), resume=True, quiet=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert a["ema"]["n_averaged"].item() == 3 * 3  # 192 images / 64 per batch, every step
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    # the shipped network is the average, not the last weights
    model, *_ = load_trained(tmp_path / "full" / "last.pt")
    w = model.state_dict()["backbone.features.0.weight"]
    assert torch.equal(w, a["ema"]["module.backbone.features.0.weight"])
    assert not torch.equal(w, a["model"]["backbone.features.0.weight"])


def test_cpu_recipe_epochs_come_from_the_model_and_bad_options_are_refused(tmp_path):
    from robustfer.train.config import resolve

    base = dict(dataset="ferplus", root="r", out=str(tmp_path))
    assert resolve(TrainConfig(**base, model="compact"), CE.recipe).epochs == 15
    assert resolve(TrainConfig(**base, model="compact"), CE.recipe).recipe == "cpu"
    assert resolve(TrainConfig(**base, model="resnet18"), CE.recipe).recipe == "official"
    with pytest.raises(RobustferError, match="--eval-every 0"):
        resolve(TrainConfig(**base, eval_every=0), CE.recipe)
    with pytest.raises(RobustferError, match="--ema 1.5"):
        resolve(TrainConfig(**base, ema=1.5), CE.recipe)


def test_ema_decay_warms_up_and_follows_the_weights_early():
    from robustfer.train.trainer import ema_decay, ema_warmup_fn

    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 100) == pytest.approx(101 / 110)
    assert ema_decay(0.999, 10**6) == 0.999
    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    ema_warmup_fn(0.999)(avg, cur, torch.tensor(1))
    assert torch.allclose(avg[0], torch.full((3,), 9 / 11))  # (1 - 2/11) of the way to the current weights
    ints = [torch.tensor(4)]
    ema_warmup_fn(0.999)(ints, [torch.tensor(7)], torch.tensor(5))
    assert ints[0].item() == 7
