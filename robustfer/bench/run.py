"""Running a grid: commands.txt for any scheduler, or local worker processes with a live view.

Each cell is `python -m robustfer train ... --auto-resume`, so running a cell twice skips it, and running
a killed one continues it. OUT/cells/<name>/cell.json keeps the cell's arguments: a rerun whose cell
asks for other settings is refused rather than mixed into the same table.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from robustfer.bench.grid import Cell, command_line, train_argv, with_threads
from robustfer.errors import RobustferError
from robustfer.train.checkpoint import write_atomic
from robustfer.train.config import TrainConfig


def cell_status(run: Path) -> str:
    """done (summary.json), partial (a checkpoint to continue from) or new."""
    if (run / "summary.json").exists():
        return "done"
    return "partial" if (run / "last.pt").exists() else "new"


def write_plan(out: Path, cells: list[Cell], stage: TrainConfig | None) -> None:
    """OUT/commands.txt (one self-contained line per run, the stage first) and each cell's cell.json;
    refuses a cell folder whose saved arguments differ from the grid's."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    if stage is not None:
        lines += ["# stage 1: the pretraining every cell starts from (run it first)", command_line(stage),
                  "# stage 2: the cells (independent; any order, any number at once)"]
    for cell in cells:
        cfg = cell.config(out)
        argv = train_argv(cfg)
        meta = {"name": cell.name, "method": cell.method, "noise": cell.noise, "seed": cell.seed,
                "control_of": list(cell.control_of), "sweep": cell.sweep, "argv": argv}
        path = Path(cfg.out) / "cell.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("argv") != argv:
                changed = sorted(set(saved.get("argv", [])) ^ set(argv))
                raise RobustferError(f"cell {cell.name}: its settings changed since {path} was written "
                                     f"(differing arguments {changed[:6]}): use another --out, or delete {path.parent}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(meta, indent=2, default=str))  # a kill never leaves a torn cell.json
        lines.append(command_line(cfg))
    write_atomic(out / "commands.txt", "\n".join(lines) + "\n")


def run_one(cfg: TrainConfig, threads: int | None, procs: set | None = None) -> int:
    """One train run in a child process (its output in RUN/train.log); returns its exit code. The child is
    kept in `procs` while it runs, so that an interrupted bench can stop it."""
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    procs = set() if procs is None else procs
    with open(run / "train.log", "a") as log:
        p = subprocess.Popen([sys.executable, "-m", "robustfer", *train_argv(with_threads(cfg, threads))],
                             stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.add(p)
        try:
            return p.wait()
        finally:
            procs.discard(p)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Threads per worker so that N workers never oversubscribe the cores (at least 1)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


def epochs_done(run: Path) -> int:
    p = run / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def run_cells(out: Path, cells: list[Cell], workers: int = 1, live: bool = True, on_done=None) -> dict[str, int]:
    """Run the cells not yet done with `workers` local processes; returns {cell name: exit code} of those run.
    `on_done` is called after each cell (bench rewrites its tables, so a grid stopped midway has them)."""
    todo = [c for c in cells if cell_status(Path(c.config(out).out)) != "done"]
    threads = threads_per_worker(workers)
    codes: dict[str, int] = {}
    started: dict[str, float] = {}
    finished_s: list[float] = []
    procs: set = set()
    stopping = []

    def job(cell: Cell) -> None:
        if stopping:
            return
        started[cell.name] = time.perf_counter()
        codes[cell.name] = run_one(cell.config(out), threads, procs)
        finished_s.append(time.perf_counter() - started.pop(cell.name))
        if on_done is not None:
            on_done()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(job, c) for c in todo]
        view = LiveView(out, cells, todo, started, finished_s, codes, workers, enabled=live)
        try:
            with view:
                while not all(f.done() for f in futures):
                    view.update()
                    time.sleep(0.5)
                view.update()
        except BaseException:  # Ctrl-C / SIGTERM: stop the running cells (they continue on the next run)
            stopping.append(True)
            for p in list(procs):
                p.terminate()
            raise
        for f in futures:
            f.result()
    return codes


class LiveView:
    """rich live table: cells done / total, the running cells' epochs, ETA (mean finished cell time)."""

    def __init__(self, out, cells, todo, started, finished_s, codes, workers, enabled=True):
        self.out, self.cells, self.todo = out, cells, todo
        self.started, self.finished_s, self.codes, self.workers = started, finished_s, codes, workers
        self.enabled = enabled and sys.stderr.isatty()
        self.live = None

    def __enter__(self):
        if self.enabled:
            from rich.live import Live

            self.live = Live(self.render(), refresh_per_second=1, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def render(self):
        from rich.table import Table

        done = sum(cell_status(Path(c.config(self.out).out)) == "done" for c in self.cells)
        left = len(self.todo) - len(self.codes)
        mean = sum(self.finished_s) / len(self.finished_s) if self.finished_s else None
        eta = "-" if mean is None else f"{mean * left / self.workers / 60:.0f} min"
        failed = [n for n, c in self.codes.items() if c]
        t = Table(title=f"bench {self.out}: {done}/{len(self.cells)} cells done, ETA {eta}"
                        + (f", {len(failed)} failed" if failed else ""))
        for col in ("running cell", "epoch", "minutes"):
            t.add_column(col)
        for c in self.cells:
            if c.name in self.started:
                run = Path(c.config(self.out).out)
                epochs = json.loads((run / "config.json").read_text()).get("epochs") if (run / "config.json").exists() else "?"
                t.add_row(c.name, f"{epochs_done(run)}/{epochs}", f"{(time.perf_counter() - self.started[c.name]) / 60:.1f}")
        return t

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self.render())


def check_disjoint(init: str | None, cells: list[Cell], out: Path) -> str:
    """Refuse a start checkpoint trained on any image a cell trains, selects or tests on (robustfer run
    folders list their training images in train_images.txt); returns the line to print. A label-free start
    (`robustfer pretrain`: its config names an `objective`) never read a label, so it may have seen the cells'
    training images, as MAE / SimSiam pre-train on the task's own images; never their selection or test ones."""
    if init is None:
        return ""
    listing = Path(init).parent / "train_images.txt"
    if not listing.exists():
        return f"note: {listing} not found; cannot check that {init} never saw the grid's images"
    label_free = _is_label_free(Path(init).parent)
    from robustfer.train.data import load_splits
    from robustfer.bench.grid import resolved

    seen = set(listing.read_text().splitlines())
    checked: set = set()
    for cell in cells:
        cfg = resolved({k: v for k, v in cell.options.items() if k != "method"}, cell.options["method"])
        key = (cfg.dataset, cfg.root, cfg.train_split, cfg.eval_split, cfg.select_split, cfg.offset, cfg.limit,
               cfg.imbalance, cfg.holdout, cfg.seed if (cfg.imbalance or cfg.select_split == "holdout") else None)
        if key in checked:
            continue
        checked.add(key)
        files = set()
        for i, part in enumerate(load_splits(cfg)):
            if part is not None and not (label_free and i == 0):
                files |= set(part.files)
        overlap = seen & files
        if overlap:
            what = "selects or tests on" if label_free else "trains, selects or tests on"
            raise RobustferError(f"{init} was trained on {len(overlap)} images that cell {cell.name} {what} "
                                 f"(e.g. {sorted(overlap)[0]}): pretrain on other images (--offset)")
    if label_free:
        return (f"{init}: label-free, trained on {len(seen)} images without their labels, none of them among the "
                "cells' selection or test images")
    return f"{init}: trained on {len(seen)} images, none of them among the cells' training, selection or test images"


def _is_label_free(run: Path) -> bool:
    import json

    try:
        return "objective" in json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
