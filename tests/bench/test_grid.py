"""Grid expansion: cells, CE controls at each method's recipe, warm-up scaling, names, errors, argv."""
import shlex

import pytest

from robustfer.bench.grid import expand, make_grid, parse_noise_list, recipe_of, resolved, train_argv
from robustfer.cli import build_parser, config_from_args
from robustfer.errors import RobustferError

BASE = {"dataset": "ferplus", "root": "r", "epochs": 6, "recipe": "official"}


def _grid(**kw):
    raw = {"methods": ["ce", "dnfer", "ncctfer"], "noise": [0, 0.3, "pair:0.3"], "seeds": [1, 2], "train": dict(BASE)}
    raw.update(kw)
    return make_grid(raw)


def test_noise_list_forms():
    assert parse_noise_list([0, 0.3, "pair:0.2", "0.3"]) == ["clean", "symmetric:0.3", "pair:0.2"]
    assert parse_noise_list(["0.1"], "uneven") == ["uneven:0.1"]
    for bad in ("1.2", "salt:0.1", "x"):
        with pytest.raises(RobustferError, match="noise setting"):
            parse_noise_list([bad])


def test_every_method_gets_a_ce_control_at_its_own_recipe():
    cells = expand(_grid())
    assert len(cells) == 3 * 2 * 5  # noise x seeds x (ce, dnfer, its control, ncctfer, its control)
    by = {c.name: c for c in cells}
    ctl = by["ce@ncctfer_symmetric0.3_s2"]
    assert ctl.method == "ce" and ctl.control_of == ("ncctfer",)
    method_recipe = recipe_of(resolved({k: v for k, v in by["ncctfer_symmetric0.3_s2"].options.items() if k != "method"}, "ncctfer"))
    ctl_recipe = recipe_of(resolved({k: v for k, v in ctl.options.items() if k != "method"}, "ce"))
    assert ctl_recipe == method_recipe and method_recipe["lr"] == 1e-4 and method_recipe["schedule"] == "constant"
    assert "method_options" not in ctl.options  # NCCTFER's own options stay NCCTFER's
    assert ctl.options["noise"] == "symmetric:0.3" and ctl.options["seed"] == 2
    # the control sits right after its method
    names = [c.name for c in cells]
    assert names.index("ce@dnfer_clean_s1") == names.index("dnfer_clean_s1") + 1
    # warm-ups scaled from the official 40 epochs to 6 (DNFER 5 -> 1, NCCTFER 4 -> 1)
    assert by["dnfer_pair0.3_s1"].options["method_options"] == {"warmup": 1}


def test_no_control_where_the_recipe_is_ces_and_controls_can_be_skipped():
    same = {"ce": {}, "dnfer": {}}
    g = _grid(methods=["ce", "dnfer"], noise=[0], seeds=[1],
              method={"dnfer": {"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4, "schedule": "exp",
                                "gamma": 0.9, "batch_size": 64, "drop_last": False}})
    assert same and [c.name for c in expand(g)] == ["ce_clean_s1", "dnfer_clean_s1"]
    assert [c.name for c in expand(_grid(controls=False, seeds=[1], noise=[0]))] == ["ce_clean_s1", "dnfer_clean_s1",
                                                                                   "ncctfer_clean_s1"]


def test_two_methods_with_one_recipe_share_one_control():
    g = _grid(methods=["dnfer", "ncctfer"], noise=[0], seeds=[1], method={"ncctfer": {"lr": 1e-3, "schedule": "exp", "gamma": 0.95, "weight_decay": 0.0}})
    names = [c.name for c in expand(g)]
    assert names == ["dnfer_clean_s1", "ce@dnfer+ncctfer_clean_s1", "ncctfer_clean_s1"]


def test_sweeps_multiply_and_name_the_cells():
    g = _grid(methods=["ce"], noise=[0], seeds=[1], sweep={"imbalance": [10, 50], "model": ["compact_s", "compact"]})
    cells = expand(g)
    assert [c.name for c in cells] == ["ce_clean_imbalance10_modelcompact_s_s1", "ce_clean_imbalance10_modelcompact_s1",
                                       "ce_clean_imbalance50_modelcompact_s_s1", "ce_clean_imbalance50_modelcompact_s1"]
    assert cells[3].options["imbalance"] == 50 and cells[3].options["model"] == "compact"


@pytest.mark.parametrize("raw, msg", [
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"colour": 1}, "unknown key"),
    ({"train": {**BASE, "seed": 3}}, "set by the grid itself"),
    ({"train": {**BASE, "epocs": 3}}, "not train options"),
    ({"train": {"root": "r"}}, "needs dataset"),
    ({"method": {"mixup": {}}}, "names no method"),
])
def test_bad_grids_are_refused_in_one_line(raw, msg):
    with pytest.raises(RobustferError, match=msg):
        make_grid({"train": dict(BASE), **raw})


def test_cell_argv_rebuilds_the_same_config(tmp_path):
    for cell in expand(_grid(seeds=[2])):
        cfg = cell.config(tmp_path)
        argv = train_argv(cfg)
        args = build_parser().parse_args(shlex.split(shlex.join(argv)))
        assert config_from_args(args) == cfg, cell.name
        assert args.auto_resume


def test_variants_are_rows_of_their_own_with_their_method_and_options():
    grid = make_grid({"methods": ["ce", "ce_prob", "pll_t1", "pll"], "noise": [0], "seeds": [1],
                      "train": {**BASE, "recipe": "cpu"},
                      "variant": {"ce_prob": {"method": "ce", "label_mode": "probability"},
                                  "pll_t1": {"method": "pll", "method_options": {"min_votes": 1}}}})
    by = {c.name: c for c in expand(grid)}
    assert sorted(by) == ["ce_clean_s1", "ce_prob_clean_s1", "pll_clean_s1", "pll_t1_clean_s1"]  # CE's recipe: no control
    assert by["ce_prob_clean_s1"].method == "ce_prob" and by["ce_prob_clean_s1"].options["method"] == "ce"
    assert by["ce_prob_clean_s1"].options["label_mode"] == "probability"
    assert "label_mode" not in by["ce_clean_s1"].options
    assert by["pll_t1_clean_s1"].options["method_options"] == {"min_votes": 1}
    assert by["pll_t1_clean_s1"].options["method"] == "pll" and "method_options" not in by["pll_clean_s1"].options
    assert "--label-mode" in train_argv(by["ce_prob_clean_s1"].config(__import__("pathlib").Path("o")))
    for bad in ({"ce": {"method": "ce"}}, {"x": {"method": "nope"}}, {"x": {"method": "ce", "bogus": 1}}):
        with pytest.raises(RobustferError, match="variant"):
            make_grid({"methods": ["ce"], "train": dict(BASE), "variant": bad})
