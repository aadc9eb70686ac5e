"""The benchmark grid: expand (grid.py), run (run.py: commands.txt or local workers), collect (collect.py)."""
from __future__ import annotations

import json
from pathlib import Path

from robustfer.bench.collect import collect, plots, results_md
from robustfer.bench.grid import Cell, Grid, expand, init_of, load_grid_file, make_grid, parse_noise_list, pretrain_config
from robustfer.bench.run import cell_status, check_disjoint, run_cells, run_one, write_plan
from robustfer.errors import RobustferError


def run_bench(grid: Grid, out: str | Path, workers: int = 1, dry_run: bool = False, live: bool = True,
              echo=print, collect_only: bool = False) -> list[dict]:
    """Plan, run (what is not done yet) and collect a grid into OUT; returns the results.csv rows.
    `collect_only`: tables and plots of the finished cells, nothing trained."""
    out = Path(out)
    stage = pretrain_config(grid, out)
    init = init_of(grid, out) or grid.train.get("init")
    cells = expand(grid, init_of(grid, out))
    write_plan(out, cells, stage)
    status = [cell_status(Path(c.config(out).out)) for c in cells]
    echo(f"{len(cells)} cells ({status.count('done')} done, {status.count('partial')} to continue, "
         f"{status.count('new')} new){'; a pretraining stage first' if stage else ''}; commands: {out / 'commands.txt'}")
    if dry_run:
        for c, s in zip(cells, status):
            echo(f"  {c.name:40s} {s}")
        return []
    codes = {}
    if not collect_only:
        # the stage's checkpoint is never committed: a grid resumed on a fresh clone trains it again
        if stage is not None and (cell_status(Path(stage.out)) != "done" or not (Path(stage.out) / "last.pt").exists())\
                and any(cell_status(Path(c.config(out).out)) != "done" for c in cells):
            echo(f"pretraining stage -> {stage.out}")
            if run_one(stage, None) != 0:
                raise RobustferError(f"the pretraining stage failed: see {Path(stage.out) / 'train.log'}")
        note = check_disjoint(init, cells, out)
        if note:
            echo(note)
        codes = run_cells(out, cells, workers=workers, live=live, on_done=lambda: write_results(grid, out, cells))
    rows, written = write_results(grid, out, cells)
    for p in written:
        echo(f"wrote {p}")
    echo(f"wrote {out / 'results.csv'} and {out / 'results.md'} ({len(rows)} of "
         f"{sum(c.role != 'crossfit' for c in cells)} table cells finished)")
    failed = [n for n, c in codes.items() if c]
    if failed:
        raise RobustferError(f"{len(failed)} cell(s) failed: " + ", ".join(
            f"{n} (see {out / 'cells' / n / 'train.log'})" for n in failed[:5]) + "; rerun bench to retry them")
    return rows


def write_results(grid: Grid, out: Path, cells: list[Cell]) -> tuple[list[dict], list[Path]]:
    """results.csv, noise_detection.csv, results.md and the plots of the cells finished so far."""
    from robustfer.bench.crossfit import detection_rows

    rows = collect(out, cells)
    detection = detection_rows(out, cells, rows)
    results_md(rows, out, f"# bench {out}\n\nGrid: {json.dumps(grid.__dict__, default=str)}\n", detection)
    return rows, plots(rows, cells, out)


__all__ = ["Cell", "Grid", "expand", "load_grid_file", "make_grid", "parse_noise_list", "run_bench"]
