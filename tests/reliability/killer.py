"""Kill-and-resume harness: start a robustfer command as its own process, SIGKILL it at a chosen moment,
and look at what the kill left behind.

Two ways to start a command, both real processes that a SIGKILL ends with no clean-up at all:
- `Exec`: the installed `robustfer` console script (a fresh interpreter: ~5 s of imports on a busy CPU);
- `Forker`: a helper interpreter that has imported robustfer, torch and TensorBoard once and os.fork()s one
  child per command, which calls `robustfer.cli.main(argv)` exactly as the console script does. A start
  costs milliseconds instead of seconds, so a test can afford 20+ kills.
The train test's uninterrupted reference and two of its kills use `Exec`, everything else `Forker`: equal
results also show that the forked children behave as the real command.

Each started command gets its own session (process group); `kill()` is `killpg(SIGKILL)`, so a `bench`
dies together with the `train` processes it started.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

# what the forked children would otherwise import on every start
_FORKER = r"""
import json, os, sys, traceback
import robustfer.cli, robustfer.train.trainer, robustfer.pretrain.runner, robustfer.bench.run, robustfer.bench.collect
import robustfer.methods, robustfer.pretrain, rich.progress, matplotlib.pyplot
from torch.utils.tensorboard import SummaryWriter
out = sys.stdout
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(req["cwd"])
        rc = 1
        try:
            rc = robustfer.cli.main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie until reaped: its pid cannot be reused
    out.write(json.dumps({"exited": pid}) + "\n"); out.flush()
    sys.stdin.readline()  # "reap"
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n"); out.flush()
"""


def robustfer_exe() -> list[str]:
    exe = Path(sys.executable).parent / "robustfer"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "robustfer"]


def child_env() -> dict:
    """One thread per process (2 shared cores; equal thread counts keep float sums in one order)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Exec:
    """`robustfer ARGV` as a fresh process in its own session."""

    def __init__(self, argv: list[str], log: Path, cwd: Path):
        self.log = open(log, "ab")
        self.p = subprocess.Popen(robustfer_exe() + argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                  env=child_env(), start_new_session=True)
        self.pid = self.p.pid

    def exited(self) -> bool:
        return self.p.poll() is not None

    def kill(self) -> None:
        if self.p.returncode is None:  # not reaped yet: the group id is still ours
            os.killpg(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        rc = self.p.wait()
        self.log.close()
        return rc


class Forker:
    """The fork server (see the module docstring); `start(argv, log, cwd)` -> a handle like Exec's."""

    def __init__(self):
        # unbuffered (bufsize 0): no line waits in a Python buffer where select() cannot see it
        self.p = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=child_env(), bufsize=0)

    def _read(self, timeout: float | None = None) -> dict | None:
        if timeout is not None and not select.select([self.p.stdout], [], [], timeout)[0]:
            return None
        line = self.p.stdout.readline()  # raw: byte by byte up to the newline
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def send(self, text: str) -> None:
        self.p.stdin.write(text.encode() + b"\n")

    def start(self, argv: list[str], log: Path, cwd: Path) -> "Forked":
        self.send(json.dumps({"argv": argv, "log": str(log), "cwd": str(cwd)}))
        return Forked(self, self._read()["pid"])

    def close(self) -> None:
        self.p.stdin.close()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a child still running after a failed test: the server waits for it
            self.p.kill()
            self.p.wait()


class Forked:
    def __init__(self, server: Forker, pid: int):
        self.server, self.pid, self.done, self.rc = server, pid, False, None

    def exited(self) -> bool:
        if not self.done:
            self.done = self.server._read(timeout=0) is not None
        return self.done

    def kill(self) -> None:
        if self.rc is None:  # not reaped: the pid and group id cannot have been reused
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # so early that the child has not called setsid() yet: no children either
                os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        if self.rc is None:
            if not self.done:
                self.server._read()
                self.done = True
            self.server.send("reap")
            self.rc = self.server._read()["status"]
        return self.rc


# ---- where a kill lands ----

def temp_files(folder: Path, pattern: str = ".*.pt.tmp*") -> list[Path]:
    """save_atomic's checkpoint temp files (`.NAME.pt.tmpPID`) anywhere under `folder`; with pattern
    ".*.tmp*" also write_atomic's (summary.json, metrics.jsonl)."""
    return sorted(p for p in Path(folder).rglob(pattern) if p.is_file())


def rows_in(path: Path) -> int:
    """Complete lines of a metrics.jsonl (0 when absent)."""
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class Kill:
    """One planned kill: `mode` "start" (a delay from the process start), "epoch" (once the run's
    metrics.jsonl has `epoch` rows, a further delay) or "write" (from that moment, the first time a
    checkpoint temp file exists: inside torch.save, before os.replace)."""
    mode: str
    epoch: int = 0
    delay: float = 0.0
    exec_: bool = False  # start this one as the real console script


@dataclass
class Outcome:
    mode: str
    killed: bool
    mid_write: bool          # a checkpoint temp file was left: the process died between torch.save and os.replace
    between: bool            # metrics.jsonl had a row its last.pt did not (died after logging the epoch)
    epoch_at_kill: int | None


def plan(rng: random.Random, n: int, epochs: int, epoch_s: float, modes: dict[str, float], exec_: int = 0,
         start_s: float = 1.0) -> list[Kill]:
    """n kills over a run of `epochs` epochs, in non-decreasing epoch order (each resumed run gets further),
    mode drawn with the weights `modes`; the first `exec_` use the real console script."""
    names, weights = list(modes), list(modes.values())
    epochs_at = sorted(rng.randrange(epochs) for _ in range(n))
    kills = []
    for i, e in enumerate(epochs_at):
        mode = rng.choices(names, weights)[0]
        if mode == "start":
            kills.append(Kill("start", e, rng.uniform(0.0, start_s + epoch_s), exec_=i < exec_))
        else:
            kills.append(Kill(mode, e, rng.uniform(0.0, 0.9 * epoch_s), exec_=i < exec_))
    return kills


def kill_at(proc, kill: Kill, watch: Path, metrics, ignore: set = frozenset(), ready=lambda: True,
            final_rows: int | None = None, timeout: float = 300.0) -> bool:
    """SIGKILL `proc` as `kill` says; False if it ended by itself first. `watch`: the folder whose
    checkpoint temp files count (but those in `ignore`, left by earlier kills); `metrics()`: the
    metrics.jsonl files whose rows count (summed); `ready()`: whether the process has reached its
    training loop (the "epoch" and "write" anchors wait for it). Once `final_rows` rows are logged, the
    final checkpoint's write is a deadline for every mode: a delay longer than the work left (the load of
    a shared machine varies) still kills, there, instead of letting the run finish."""
    t0 = time.monotonic()
    anchor = t0 if kill.mode == "start" else None
    while time.monotonic() - t0 < timeout:
        if proc.exited():
            return False
        now = time.monotonic()
        rows = sum(rows_in(m) for m in metrics())
        if anchor is None and rows >= kill.epoch and ready():
            anchor = now
        writing = bool(set(temp_files(watch)) - ignore)
        if anchor is not None and (kill.mode == "write" and writing or kill.mode != "write" and now - anchor >= kill.delay) \
                or writing and final_rows is not None and rows >= final_rows:
            proc.kill()
            return True
        time.sleep(0.001)
    proc.kill()
    raise AssertionError(f"{kill} did not happen within {timeout} s")


# ---- what must hold after every kill ----

def check_checkpoints(folder: Path) -> int:
    """Every *.pt under `folder` loads (weights_only: plain tensors and containers); returns how many."""
    n = 0
    for p in sorted(Path(folder).rglob("*.pt")):
        try:
            torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{p} is unreadable after a kill: {e!r}") from None
        n += 1
    return n


def last_epoch(run: Path) -> int | None:
    p = Path(run) / "last.pt"
    return torch.load(p, map_location="cpu", weights_only=True)["epoch"] if p.exists() else None


@dataclass
class Chain:
    """A command killed again and again, each time restarted by `resume(run)` (the argv that continues
    it), until `n` kills have landed; then run to the end."""
    first: list[str]
    resume: callable
    run: Path                    # the run folder (train / pretrain) or grid folder (bench)
    metrics: callable            # () -> metrics.jsonl files whose rows anchor "epoch"/"write" kills
    epochs: int = 0              # epochs in all (summed over a grid's cells) and seconds per epoch: a "start"
    epoch_s: float = 0.0         # delay is cut to 90% of the work left, so that it cannot outlast the run
    start_s: float = 0.5
    ready_glob: str | None = None  # files that appear once a process is in its training loop (bench: a
                                   # cell's new TensorBoard file), else the loop is taken as reached at once
    outcomes: list[Outcome] = field(default_factory=list)
    checkpoints_loaded: int = 0
    starts: int = 0

    def go(self, kills: list[Kill], forker: Forker, logs: Path, finish: bool = True) -> int:
        argv = self.first
        for kill in kills:
            if kill.mode == "start" and self.epochs and not kill.exec_:
                left = self.epochs - sum(last_epoch(m.parent) or 0 for m in self.metrics())
                kill = replace(kill, delay=min(kill.delay, 0.9 * (self.start_s + left * self.epoch_s)))
            before = set(temp_files(self.run))
            ready = lambda: True  # noqa: E731
            if self.ready_glob:
                old = set(self.run.glob(self.ready_glob))
                ready = lambda: bool(set(self.run.glob(self.ready_glob)) - old)  # noqa: E731
            proc = self._start(argv, kill.exec_, forker, logs)
            try:
                killed = kill_at(proc, kill, self.run, self.metrics, ignore=before, ready=ready,
                                 final_rows=self.epochs or None)
            finally:  # never leave a process running behind a failed check
                proc.kill()
                rc = proc.wait()
            if not killed:  # ended by itself (finished, or a start-up delay longer than the run)
                assert rc == 0, f"{argv} failed with exit code {rc}: see {logs}"
                self.outcomes.append(Outcome(kill.mode, False, False, False, None))
            else:
                assert rc == -signal.SIGKILL, f"{argv}: exit code {rc} after SIGKILL: see {logs}"
                self.outcomes.append(self._landed(kill.mode, before))
            self.checkpoints_loaded += check_checkpoints(self.run)
            argv = self.resume(self.run)
        if not finish:
            return 0
        proc = self._start(argv, False, forker, logs)
        while not proc.exited():
            time.sleep(0.01)
        rc = proc.wait()
        assert rc == 0, f"{argv} failed with exit code {rc}: see {logs}"
        self.checkpoints_loaded += check_checkpoints(self.run)
        return rc

    def _start(self, argv, exec_, forker, logs):
        self.starts += 1
        log = logs / f"{self.starts:03d}.log"
        return Exec(argv, log, logs) if exec_ else forker.start(argv, log, logs)

    def _landed(self, mode: str, before: set) -> Outcome:
        mid_write = bool(set(temp_files(self.run)) - before)
        runs = {m.parent for m in self.metrics()} or {self.run}
        between = any(rows_in(r / "metrics.jsonl") > (last_epoch(r) or 0) for r in runs)
        epochs = [last_epoch(r) for r in runs]
        return Outcome(mode, True, mid_write, between, max((e for e in epochs if e is not None), default=None))

    @property
    def kills(self) -> int:
        return sum(o.killed for o in self.outcomes)

    def report(self) -> dict:
        k = [o for o in self.outcomes if o.killed]
        return {"kills": len(k), "mid_write": sum(o.mid_write for o in k),
                "after_row_before_checkpoint": sum(o.between for o in k),
                "by_mode": {m: sum(o.mode == m for o in k) for m in ("start", "epoch", "write")},
                "ended_before_kill": sum(not o.killed for o in self.outcomes),
                "checkpoints_loaded": self.checkpoints_loaded, "processes": self.starts,
                "temp_files_left": len(temp_files(self.run, ".*.tmp*")),
                "detail": [f"{o.mode}@{o.epoch_at_kill}{'/w' if o.mid_write else ''}{'' if o.killed else '/ended'}"
                           for o in self.outcomes]}


def wait_done(proc, timeout: float = 600.0) -> int:
    t0 = time.monotonic()
    while not proc.exited():
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no exit within {timeout} s")
        time.sleep(0.01)
    return proc.wait()
