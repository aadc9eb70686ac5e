"""bench end to end on a tiny grid of the real FERPlus: pretraining stage, controls, workers, results,
plots, commands.txt; reruns skip, killed cells continue, changed cells and overlapping inits are refused."""
import csv
import json
import shlex
from dataclasses import replace

import pytest
import torch

from robustfer.bench import make_grid, run_bench
from robustfer.bench.grid import expand
from robustfer.bench.run import threads_per_worker
from robustfer.cli import main
from robustfer.errors import RobustferError
from robustfer.train import train


def _raw(root, **kw):
    raw = {"methods": ["ce", "dnfer"], "noise": [0, 0.3], "seeds": [1],
           "train": {"dataset": "ferplus", "root": str(root), "epochs": 2, "limit": 128, "eval_limit": 64,
                     "batch_size": 32, "recipe": "official"},
           "pretrain": {"method": "ce", "recipe": "cpu", "offset": 300, "limit": 128, "epochs": 1}}
    raw.update(kw)
    return raw


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, ferplus_root):
    out = tmp_path_factory.mktemp("bench")
    rows = run_bench(make_grid(_raw(ferplus_root)), out, workers=2, live=False, echo=lambda *a: None)
    return out, rows


def test_grid_runs_every_cell_from_the_pretrained_start(grid_run):
    out, rows = grid_run
    names = sorted(r["cell"] for r in rows)
    assert names == sorted(["ce_clean_s1", "dnfer_clean_s1", "ce@dnfer_clean_s1", "ce_symmetric0.3_s1",
                            "dnfer_symmetric0.3_s1", "ce@dnfer_symmetric0.3_s1"])
    for name in names:
        cfg = json.loads((out / "cells" / name / "config.json").read_text())
        assert cfg["init"] == str(out / "pretrain" / "last.pt") and cfg["select_split"] == "valid"
    ctl = json.loads((out / "cells" / "ce@dnfer_symmetric0.3_s1" / "config.json").read_text())
    dn = json.loads((out / "cells" / "dnfer_symmetric0.3_s1" / "config.json").read_text())
    assert ctl["method"] == "ce" and all(ctl[k] == dn[k] for k in ("optimizer", "lr", "schedule", "gamma", "batch_size", "epochs"))
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {r["control_of"] for r in table} == {"", "dnfer"}
    noisy = [r for r in table if r["method"] == "dnfer" and r["noise_type"] == "symmetric"][0]
    assert noisy["noise_precision"] != "" and float(noisy["noise_rate"]) == 0.3 and noisy["selected_on"] == "valid"
    md = (out / "results.md").read_text()
    assert "| ce @ dnfer recipe |" in md and "symmetric 30%" in md and "**" in md
    for png in ("accuracy_vs_noise.png", "epochs.png", "noise_pr.png"):
        assert (out / png).stat().st_size > 1000
    lines = (out / "commands.txt").read_text().splitlines()
    cmds = [ln for ln in lines if not ln.startswith("#")]
    assert len(cmds) == 7 and "--out " + str(out / "pretrain") in cmds[0]
    assert all("--auto-resume" in c and "--threads" not in c for c in cmds)


def test_rerun_skips_finished_cells_and_continues_a_killed_one(grid_run, ferplus_root):
    out, rows = grid_run
    killed = out / "cells" / "ce_clean_s1"
    before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*/last.pt")}
    # kill ce_clean_s1 after its first epoch: remove its run and train one epoch of the same cell
    cell = next(c for c in expand(make_grid(_raw(ferplus_root)), str(out / "pretrain" / "last.pt")) if c.name == "ce_clean_s1")
    full = json.loads((killed / "summary.json").read_text())
    for p in killed.iterdir():
        if p.name != "cell.json":
            p.unlink()
    # the first run's workers trained with threads_per_worker(2) threads each; the killed epoch and the
    # continuation use the same number, so float sums keep their order and the result is bit-identical
    n = torch.get_num_threads()
    try:
        train(replace(cell.config(out), threads=threads_per_worker(2)), quiet=True, stop_after=1)
    finally:
        torch.set_num_threads(n)
    rows2 = run_bench(make_grid(_raw(ferplus_root)), out, workers=2, live=False, echo=lambda *a: None)
    assert len(rows2) == 6
    again = json.loads((killed / "summary.json").read_text())
    assert again["last"] == full["last"] and again["best"] == full["best"]  # continued exactly (vote figures too)
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*/last.pt")}
    assert len(after) == 6 and all(after[n] == before[n] for n in after if n != "ce_clean_s1")  # not retrained


def test_changed_settings_are_refused(grid_run, ferplus_root):
    out, _ = grid_run
    raw = _raw(ferplus_root)
    raw["train"]["epochs"] = 3
    with pytest.raises(RobustferError, match="settings changed"):
        run_bench(make_grid(raw), out, live=False, echo=lambda *a: None)


def test_an_init_that_saw_the_cells_images_is_refused(tmp_path, ferplus_root):
    raw = _raw(ferplus_root, methods=["ce"], noise=[0])
    raw["pretrain"] = {"method": "ce", "recipe": "cpu", "offset": 64, "limit": 128, "epochs": 1}  # overlaps 0..127
    with pytest.raises(RobustferError, match="images that cell ce_clean_s1 trains"):
        run_bench(make_grid(raw), tmp_path / "b", live=False, echo=lambda *a: None)


def test_cli_dry_run_lists_cells_and_writes_commands(tmp_path, ferplus_root, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('methods = ["ce", "ncctfer"]\nnoise = [0, "pair:0.3"]\n[train]\nepochs = 2\n')
    rc = main(["bench", "--grid", str(grid), "--dataset", "ferplus", "--root", str(ferplus_root), "--recipe", "official",
               "--seeds", "1,2", "--out", str(tmp_path / "o"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "12 cells (0 done, 0 to continue, 12 new)" in out and "ce@ncctfer_pair0.3_s2" in out
    cmds = [shlex.split(ln) for ln in (tmp_path / "o" / "commands.txt").read_text().splitlines()]
    assert len(cmds) == 12 and all(c[:4] == ["python", "-m", "robustfer", "train"] for c in cmds)
    rc = main(["bench", "--grid", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "cannot read the grid file" in capsys.readouterr().err


def test_live_view_shows_cells_done_running_epochs_and_eta(grid_run, ferplus_root):
    import time

    from rich.console import Console

    from robustfer.bench.run import LiveView

    out, _ = grid_run
    cells = expand(make_grid(_raw(ferplus_root)), str(out / "pretrain" / "last.pt"))
    started = {"dnfer_clean_s1": time.perf_counter() - 120}
    view = LiveView(out, cells, cells[:4], started, [60.0, 120.0], {"a": 0, "b": 1}, workers=1, enabled=False)
    table = view.render()
    assert table.title.endswith(": 6/6 cells done, ETA 3 min, 1 failed")  # 2 left x 90 s mean / 1 worker
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "dnfer_clean_s1" in text and "2/2" in text and "2.0" in text


def test_results_carry_the_vote_figures_of_ferplus_cells(grid_run):
    out, rows = grid_run
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    for r in table:
        s = json.loads((out / "cells" / r["cell"] / "summary.json").read_text())
        for k in ("vote_kl", "top_vote_prob", "plausible_accuracy"):
            assert float(r[f"last_{k}"]) == pytest.approx(s["last"][k]) and float(r[f"best_{k}"]) == pytest.approx(s["best"][k])
    md = (out / "results.md").read_text()
    assert "vote KL" in md and "top-vote probability" in md and "plausible accuracy" in md


def test_results_name_the_training_precision_and_flag_a_mixed_grid(grid_run, tmp_path):
    from robustfer.bench.collect import results_md

    out, rows = grid_run
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    for r in table:  # the precision each cell resolved, as its config.json says
        cfg = json.loads((out / "cells" / r["cell"] / "config.json").read_text())
        assert r["precision"] == cfg["precision_resolved"] in ("fp32", "bf16")
    one = sorted({r["precision"] for r in rows})
    assert f"Training precision: {one[0]}." in (out / "results.md").read_text() and len(one) == 1
    mixed = [dict(r, precision="bf16" if i == 0 else "fp32") for i, r in enumerate(rows)]
    assert "Training precision: bf16, fp32 (MIXED" in results_md(mixed, tmp_path)
