"""Kill and resume (issue 18, item 1): `train`, a stateful method (SCN, PLL), `pretrain` and a `bench`
grid are SIGKILLed again and again at seeded random moments: after a random delay from the start, at a
random moment of a random epoch, and the moment a checkpoint's temp file exists (inside save_atomic's
torch.save, before its os.replace). After every kill every *.pt in the run folder must load; the next
process continues the run (`train --resume`, `pretrain --resume`, the same `bench` command); at the end
every tensor of the checkpoints, every metrics.jsonl row and summary.json (wall-clock fields excepted)
equal those of an uninterrupted run of the real console script.

Figures of each chain (kills, where they landed, checkpoints loaded) are printed: `pytest -s` shows them.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from killer import Chain, Exec, Forker, Kill, check_checkpoints, plan, wait_done

pytestmark = pytest.mark.slow

WALL = {"images_per_s", "wall_s"}  # wall-clock fields: the only ones allowed to differ


@pytest.fixture(scope="module")
def forker():
    f = Forker()
    yield f
    f.close()


def train_args(root: Path, out: Path, *extra: str, epochs: int = 6) -> list[str]:
    return ["train", "--dataset", "ferplus", "--root", str(root), "--out", str(out), "--epochs", str(epochs),
            "--limit", "64", "--batch-size", "16", "--input-size", "32", "--eval-split", "valid",
            "--eval-limit", "16", "--threads", "1", "--seed", "7", "--quiet", *extra]


def resume_train(run: Path) -> list[str]:
    """`train --resume`; before the first checkpoint (a kill in epoch 0) there is nothing to continue and
    --resume says so in one line: the first command starts the run again (as --auto-resume would)."""
    if (run / "last.pt").exists():
        return ["train", "--out", str(run), "--resume", "--quiet"]
    return json.loads((run.parent / f"{run.name}.argv").read_text())


def reference(argv: list[str], tmp: Path, forker: Forker | None = None) -> None:
    """The uninterrupted run: the installed console script, or (`forker`, to save the seconds of a
    start where the train test has already shown the two to agree) a forked child."""
    logs = tmp / "ref-logs"
    logs.mkdir()
    proc = Exec(argv, logs / "ref.log", logs) if forker is None else forker.start(argv, logs / "ref.log", logs)
    rc = wait_done(proc)
    assert rc == 0, (logs / "ref.log").read_text()[-3000:]


def epoch_seconds(run: Path) -> float:
    s = json.loads((run / "summary.json").read_text())
    return s["wall_s"] / s["epochs"]


def rows(path: Path) -> list[dict]:
    out = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL} for r in out]


def assert_same_tensors(a, b, where: str) -> None:
    """Every tensor (and number, string) of two checkpoint entries equal, wall-clock fields and the run
    folder's own path excepted."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - WALL - {"out"}
        assert keys == set(b) - WALL - {"out"}, (where, keys ^ (set(b) - WALL - {"out"}))
        for k in keys:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_run(ref: Path, run: Path, checkpoints=("last.pt", "best.pt")) -> None:
    for name in checkpoints:
        a = torch.load(ref / name, map_location="cpu", weights_only=True)
        b = torch.load(run / name, map_location="cpu", weights_only=True)
        assert_same_tensors(a, b, f"{run.name}/{name}")
    ra, rb = rows(ref / "metrics.jsonl"), rows(run / "metrics.jsonl")
    assert len(ra) == len(rb) and ra == rb  # no row lost, none twice
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (ref, run))
    for s in (sa, sb):
        s.pop("wall_s"), s.pop("images_per_s"), s.pop("checkpoint", None)
    assert sa == sb


def train_chain(tmp: Path, root: Path, forker: Forker, kills, *extra: str, epochs: int = 6,
                finish: bool = True) -> Chain:
    run = tmp / "killed"
    argv = train_args(root, run, *extra, epochs=epochs)
    (tmp / "killed.argv").write_text(json.dumps(argv))
    logs = tmp / "logs"
    logs.mkdir()
    epoch_s = epoch_seconds(tmp / "ref") if (tmp / "ref" / "summary.json").exists() else 1.0
    chain = Chain(argv, resume_train, run, lambda: [run / "metrics.jsonl"], epochs, epoch_s)
    chain.go(kills, forker, logs, finish)
    return chain


def show(name: str, chain: Chain, kills: int, mid_write: int = 1) -> dict:
    """Prints the chain's figures and checks them: at least `kills` kills, `mid_write` of them inside a
    checkpoint write, and no temp file left (save_atomic removes those of killed writers)."""
    r = chain.report()
    print(f"\n{name}: {json.dumps(r)}")
    assert r["kills"] >= kills and r["mid_write"] >= mid_write and r["temp_files_left"] == 0, r
    return r


# ---- train, CE: 20 kills ----

def test_train_survives_20_kills_and_resumes_exactly(tmp_path, tiny_ferplus, forker):
    reference(train_args(tiny_ferplus, tmp_path / "ref", "--noise", "symmetric:0.3"), tmp_path)
    epoch_s = epoch_seconds(tmp_path / "ref")
    rng = random.Random(18)
    kills = plan(rng, 18, 6, epoch_s, {"start": 1, "epoch": 2, "write": 3})
    # two of them as the real console script: one early (imports, data, first epoch), one mid-write
    kills = [Kill("start", 0, rng.uniform(1.0, 8.0), exec_=True)] + kills[:9] \
        + [Kill("write", kills[9].epoch, 0.0, exec_=True)] + kills[9:]
    chain = train_chain(tmp_path, tiny_ferplus, forker, kills, "--noise", "symmetric:0.3")
    show("train ce", chain, 20, mid_write=5)
    assert_same_run(tmp_path / "ref", tmp_path / "killed")
    # the run folder holds what an uninterrupted one does, but TensorBoard's events: one file per process
    assert {p.name for p in (tmp_path / "killed").iterdir() if not p.name.startswith("events.")} \
        == {p.name for p in (tmp_path / "ref").iterdir() if not p.name.startswith("events.")}
    assert_tensorboard_matches_metrics(tmp_path / "killed")


def assert_tensorboard_matches_metrics(run: Path) -> None:
    """The events files of all the processes, read as TensorBoard reads them (each resumed writer's
    purge_step drops the steps a killed process logged but did not checkpoint): one value per epoch and
    scalar, that of metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list(run.glob("events.*"))) > 1
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "train_loss" in ea.Tags()["scalars"]
    for tag in ea.Tags()["scalars"]:
        events = ea.Scalars(tag)
        assert [e.step for e in events] == list(range(len(logged))), tag
        assert [e.value for e in events] == pytest.approx([r[tag] for r in logged], rel=1e-6), tag  # float32


# ---- stateful methods: SCN's relabels, PLL's targets ----

@pytest.mark.parametrize("method,extra,state", [
    ("scn", ("--method", "scn", "--recipe", "official", "--method-opt", "warmup=1", "--noise", "symmetric:0.3"),
     "scn_labels"),
    ("pll", ("--method", "pll"), "pll_targets"),
])
def test_stateful_method_survives_kills_and_resumes_exactly(tmp_path, tiny_ferplus, forker, method, extra, state):
    reference(train_args(tiny_ferplus, tmp_path / "ref", *extra, epochs=4), tmp_path, forker)
    kills = plan(random.Random(f"18{method}"), 6, 4, epoch_seconds(tmp_path / "ref"), {"start": 1, "epoch": 1, "write": 2})
    chain = train_chain(tmp_path, tiny_ferplus, forker, kills, *extra, epochs=4)
    show(f"train {method}", chain, 5)
    assert_same_run(tmp_path / "ref", tmp_path / "killed")
    st = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["method_state"][state]
    if method == "scn":
        assert (st >= 0).any()  # labels were relabelled: the state the resume had to carry is not trivial
    else:
        assert ((st > 0).sum(1) > 1).any() and (st.amax(1) < 1).any()  # ambiguous targets, being disambiguated


# ---- pretrain ----

def pretrain_args(root: Path, out: Path) -> list[str]:
    return ["pretrain", "--dataset", "ferplus", "--root", str(root), "--out", str(out), "--objective", "simsiam",
            "--model", "compact_s", "--epochs", "5", "--limit", "64", "--batch-size", "16", "--input-size", "32",
            "--threads", "1", "--seed", "5", "--quiet"]


def test_pretrain_survives_kills_and_resumes_exactly(tmp_path, tiny_ferplus, forker):
    reference(pretrain_args(tiny_ferplus, tmp_path / "ref"), tmp_path, forker)
    run = tmp_path / "killed"
    first = pretrain_args(tiny_ferplus, run)

    def resume(run: Path) -> list[str]:
        return ["pretrain", "--out", str(run), "--resume", "--quiet"] if (run / "last.pt").exists() else first

    kills = plan(random.Random(1805), 6, 5, epoch_seconds(tmp_path / "ref"), {"start": 1, "epoch": 1, "write": 2})
    (tmp_path / "logs").mkdir()
    chain = Chain(first, resume, run, lambda: [run / "metrics.jsonl"], 5, epoch_seconds(tmp_path / "ref"))
    chain.go(kills, forker, tmp_path / "logs")
    show("pretrain", chain, 5)
    assert_same_run(tmp_path / "ref", run, checkpoints=("last.pt",))


# ---- bench: a grid killed mid-cell, then the same command again ----

def bench_args(root: Path, out: Path) -> list[str]:
    return ["bench", "--dataset", "ferplus", "--root", str(root), "--out", str(out), "--methods", "ce",
            "--noise", "0,0.3", "--seeds", "1", "--epochs", "3", "--limit", "64", "--batch-size", "16",
            "--input-size", "32", "--eval-split", "valid", "--eval-limit", "16", "--threads", "1", "--workers", "1",
            "--no-live", "--no-controls"]


def results(grid: Path) -> list[dict]:
    with open(grid / "results.csv") as f:
        return [{k: v for k, v in r.items() if k not in WALL}
                for r in csv.DictReader(f)]


def test_bench_grid_killed_mid_cell_reruns_to_the_same_results(tmp_path, tiny_ferplus, forker):
    reference(bench_args(tiny_ferplus, tmp_path / "ref"), tmp_path, forker)
    cells = sorted(p.name for p in (tmp_path / "ref" / "cells").iterdir())
    assert len(cells) == 2
    epoch_s = max(epoch_seconds(tmp_path / "ref" / "cells" / c) for c in cells)
    grid = tmp_path / "killed"
    argv = bench_args(tiny_ferplus, grid)
    # "epoch" / "write" kills anchored on the rows of both cells together (6 epochs in all), once the
    # cell's train process is in its loop; "start" kills mostly land while that process starts
    kills = plan(random.Random(1806), 5, 6, epoch_s, {"start": 1, "epoch": 2, "write": 2}, start_s=6.0)
    (tmp_path / "logs").mkdir()
    chain = Chain(argv, lambda _: argv, grid, lambda: sorted(grid.glob("cells/*/metrics.jsonl")), 6, epoch_s, 6.0,
                  ready_glob="cells/*/events.out.tfevents.*")
    chain.go(kills, forker, tmp_path / "logs")
    show("bench", chain, 5)
    for c in cells:
        assert_same_run(tmp_path / "ref" / "cells" / c, grid / "cells" / c)
    assert results(tmp_path / "ref") == results(grid)
    assert check_checkpoints(grid) == 4


# ---- a kill inside the resume's own rewrite of metrics.jsonl ----

@pytest.mark.parametrize("torn", ["", '{"epoch": 0, "train_lo'])
def test_resume_restores_metrics_a_kill_left_torn(tmp_path, tiny_ferplus, forker, torn):
    """A resumed run first rewrites metrics.jsonl to the checkpointed epochs' rows; were that rewrite done in
    place, a kill inside it would leave the file empty or cut (`torn`), and the next resume would lose
    the rows for good. Whatever state a kill leaves the file in, the rows come back from last.pt."""
    reference(train_args(tiny_ferplus, tmp_path / "ref", epochs=4), tmp_path, forker)
    chain = train_chain(tmp_path, tiny_ferplus, forker, [Kill("write", 2)], epochs=4, finish=False)
    run = tmp_path / "killed"
    (run / "metrics.jsonl").write_text(torn)
    logs = tmp_path / "logs2"
    logs.mkdir()
    assert wait_done(forker.start(resume_train(run), logs / "resume.log", logs)) == 0
    show(f"torn metrics.jsonl {torn!r}", chain, 1)
    assert_same_run(tmp_path / "ref", run)


def test_resume_before_the_first_checkpoint_says_so(tmp_path, tiny_ferplus, forker):
    """Killed inside its first checkpoint write, a run has no last.pt: --resume has nothing to continue and
    says so in one line (exit 2), naming the way on; the first command then starts the run again."""
    chain = train_chain(tmp_path, tiny_ferplus, forker, [Kill("write", 0)], epochs=2, finish=False)
    run = tmp_path / "killed"
    assert chain.kills == 1 and not (run / "last.pt").exists()
    log = tmp_path / "resume.log"
    assert wait_done(forker.start(["train", "--out", str(run), "--resume", "--quiet"], log, tmp_path)) == 2
    lines = log.read_text().splitlines()
    assert lines == [f"error: {run} holds no checkpoint yet (last.pt; the run stopped during its first epoch): "
                     "start it again with the command that made it (--auto-resume does so too)"]
    assert wait_done(forker.start(resume_train(run), log, tmp_path)) == 0 and (run / "summary.json").exists()
