"""results.csv / results.md carry the vote-aware figures (methods.md §5) where the cells have them, and
leave them out (no column values, no tables) where the data set has no votes; KL's best is the lowest."""
import csv
import json

from robustfer.bench.collect import COLUMNS, collect, results_md
from robustfer.bench.grid import Cell


def _cell(out, name, method, seed, votes):
    cell = Cell(name=name, options={"dataset": "ferplus", "root": "r", "method": method, "seed": seed},
                method=method, noise="clean", seed=seed)
    run = out / "cells" / name
    run.mkdir(parents=True)
    block = {"epoch": 0, "accuracy": 0.5, "mean_class_accuracy": 0.4}
    if votes:
        block.update(vote_kl=votes[0], top_vote_prob=votes[1], plausible_accuracy=votes[2])
    summary = {"last": block, "best": block, "best_mean_class": block, "last5": block, "selected_on": "valid",
               "epochs": 1, "wall_s": 1.0, "images_per_s": 10.0}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps({**block, "train_loss": 1.0}) + "\n")
    return cell


def test_vote_columns_and_tables_only_where_cells_have_votes(tmp_path):
    cells = [_cell(tmp_path, "a_s1", "a", 1, (0.9, 0.5, 0.8)), _cell(tmp_path, "a_s2", "a", 2, (1.1, 0.6, 0.9)),
             _cell(tmp_path, "b_s1", "b", 1, (0.7, 0.4, 0.7))]
    rows = collect(tmp_path, cells)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and float(table[2]["last_vote_kl"]) == 0.7 and float(table[0]["best_plausible_accuracy"]) == 0.8
    md = results_md(rows, tmp_path)
    kl = md.split("vote KL")[1].split("**", 1)[1]
    assert "| a | 1.000 ± 0.141 |" in kl and "| b | **0.700** |" in kl  # nats, lowest in bold
    assert "| a | **55.00 ± 7.07** |" in md.split("top-vote probability")[1]  # in %, highest in bold
    assert "plausible accuracy" in md

    plain = tmp_path / "plain"
    rows = collect(plain, [_cell(plain, "c_s1", "c", 1, None)])
    assert rows[0]["last_vote_kl"] is None
    with open(plain / "results.csv") as f:
        assert next(csv.DictReader(f))["last_vote_kl"] == ""
    md = results_md(rows, plain)
    assert "vote KL" not in md and "plausible" not in md and "Test accuracy, last epoch" in md


def test_training_figures_and_time_are_tabled_where_cells_log_them(tmp_path):
    """The last epoch's argmax recovery (CE, POI), PIN's recovery and POI's confidence become columns and
    tables; training time is tabled in minutes, the shortest in bold."""
    cells = [_cell(tmp_path, "ce_s1", "ce", 1, None), _cell(tmp_path, "poi_s1", "poi", 1, None)]
    extra = {"ce_s1": {"argmax_clean_recovery": 0.6}, "poi_s1": {"argmax_clean_recovery": 0.7,
             "pin_argmax_clean_recovery": 0.65, "confidence_mean_flipped": 0.3, "confidence_mean_clean": 0.4}}
    for name, figs in extra.items():
        run = tmp_path / "cells" / name
        row = json.loads((run / "metrics.jsonl").read_text())
        (run / "metrics.jsonl").write_text(json.dumps({**row, **figs}) + "\n")
    (tmp_path / "cells" / "poi_s1" / "summary.json").write_text(
        (tmp_path / "cells" / "poi_s1" / "summary.json").read_text().replace('"wall_s": 1.0', '"wall_s": 150.0'))
    rows = collect(tmp_path, cells)
    assert rows[0]["pin_argmax_clean_recovery"] is None and rows[1]["pin_argmax_clean_recovery"] == 0.65
    md = results_md(rows, tmp_path)
    own = md.split("the trained network's argmax gives")[1]
    assert "| ce | 60.00 |" in own and "| poi | **70.00** |" in own
    assert "| poi | **65.00** |" in md.split("prior network (PIN) gives")[1] and "| ce |" not in md.split("(PIN) gives")[1].split("**Mean")[0]
    assert "| poi | **0.300** |" in md.split("on flipped labels")[1]
    time = md.split("Training time, minutes")[1]
    assert "| ce | **0.0** |" in time and "| poi | 2.5 |" in time
