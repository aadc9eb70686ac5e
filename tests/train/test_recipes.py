"""Step schedule, class-balanced sampler and per-data-set recipes (NCCTFER on AffectNet)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from robustfer.bench.grid import recipe_of
from robustfer.cli import build_parser, config_from_args
from robustfer.methods import create_method, method_class
from robustfer.train import TrainConfig, train
from robustfer.train.config import resolve
from robustfer.train.trainer import Run, make_schedule


def _make_affectnet(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("affectnet_fixture", Path(__file__).parents[1] / "data" / "test_affectnet.py")
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))  # its `reader_checks` helper
    spec.loader.exec_module(mod)
    return mod.make_affectnet(root)


def test_step_schedule_divides_at_the_start_of_each_milestone():
    cfg = TrainConfig(dataset="x", root="", out="", schedule="step", milestones=[0, 10], gamma=0.1, epochs=12)
    opt = torch.optim.Adam([{"params": [torch.zeros(1, requires_grad=True)], "lr": 1e-4},
                            {"params": [torch.zeros(1, requires_grad=True)], "lr": 1e-3}])
    sched, unit = make_schedule(cfg, opt, 10)
    lrs = []
    for _ in range(12):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert unit == "epoch"
    assert lrs[0] == pytest.approx([1e-5, 1e-4]) and lrs[9] == pytest.approx([1e-5, 1e-4])
    assert lrs[10] == pytest.approx([1e-6, 1e-5]) and lrs[11] == pytest.approx([1e-6, 1e-5])


def test_ncctfer_on_affectnet_gets_its_affectnet_recipe_and_options():
    cls = method_class("ncctfer")
    cfg = resolve(TrainConfig(dataset="affectnet", root="", out="", method="ncctfer", model="resnet18"),
                  cls.recipe_for("affectnet"), cls.cpu_recipe_ok)
    assert (cfg.schedule, cfg.milestones, cfg.gamma, cfg.sampler, cfg.norm, cfg.epochs, cfg.batch_size, cfg.drop_last) == \
        ("step", [0, 10], 0.1, "balanced", "half", 12, 128, False)
    m = create_method("ncctfer", "affectnet")
    assert (m.k, m.warmup) == (3, 3) and create_method("ncctfer", "affectnet", k=2).k == 2
    other = resolve(TrainConfig(dataset="ferplus", root="", out="", method="ncctfer", model="resnet18"),
                    cls.recipe_for("ferplus"), cls.cpu_recipe_ok)
    assert (other.schedule, other.sampler, other.batch_size, other.drop_last) == ("constant", "shuffle", 128, True)
    assert (create_method("ncctfer", "ferplus").k, create_method("ncctfer").warmup) == (4, 4)
    r = recipe_of(cfg)  # a CE control copies the schedule, its milestones and the sampler
    assert r["milestones"] == [0, 10] and r["sampler"] == "balanced" and r["gamma"] == 0.1
    assert "sampler" not in recipe_of(other) and "milestones" not in recipe_of(other)


def test_cli_milestones_and_sampler():
    args = build_parser().parse_args(["train", "--dataset", "ferplus", "--root", "r", "--out", "o", "--schedule", "step",
                                      "--milestones", "0,10", "--sampler", "balanced"])
    cfg = config_from_args(args)
    assert cfg.milestones == [0, 10] and cfg.sampler == "balanced"
    assert build_parser().parse_args(["train", "--dataset", "ferplus", "--root", "r", "--out", "o", "--milestones", "[0, 10]"]).milestones == [0, 10]


def test_balanced_sampler_draws_each_class_about_equally(tmp_path, ferplus_root):
    cfg = TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path / "r"), limit=2000, eval_limit=16,
                      sampler="balanced", threads=1)
    run = Run(cfg, quiet=True)
    order = run.epoch_order(len(run.labels))
    given = torch.bincount(run.labels, minlength=8).float()
    drawn = torch.bincount(run.labels[order], minlength=8).float()
    assert len(order) == len(run.labels) and given.max() / given.min() > 10  # FERPlus is imbalanced
    present = given > 0
    assert drawn[present].min() > 0.5 * len(order) / present.sum()  # every class near its equal share
    plain = Run(TrainConfig(**{**cfg.__dict__, "sampler": None}), quiet=True)
    assert torch.equal(plain.epoch_order(len(plain.labels)).sort().values, torch.arange(len(plain.labels)))


def test_ncctfer_trains_on_affectnet_with_its_recipe(tmp_path):
    root = _make_affectnet(tmp_path / "AffectNet")
    out = tmp_path / "run"
    train(TrainConfig(dataset="affectnet", root=str(root), out=str(out), method="ncctfer", model="compact_s",
                      recipe="official", epochs=2, batch_size=4, eval_split="val", select_split="holdout", threads=1),
          quiet=True)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["schedule"], saved["milestones"], saved["sampler"], saved["norm"]) == ("step", [0, 10], "balanced", "half")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(1e-5)  # ÷10 from the first epoch
