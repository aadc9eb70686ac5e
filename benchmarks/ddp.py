"""Training images/s of one process vs several ranks (torchrun, DistributedDataParallel), issue 19.

    python benchmarks/ddp.py [--root ../shared/data/ferplus] [--limit 2048] [--rounds 2] [--ranks 2]
                             [--device cpu|cuda] [--json F]

Each configuration is the real command line (`python -m robustfer train ...` or `python -m torch.distributed.run
--standalone --nproc-per-node N -m robustfer train ...`): compact_s, CE, FERPlus's first --limit training images,
global batch 128, one epoch; the figure is the epoch's `images_per_s` from metrics.jsonl (training only: no
start-up, data loading or evaluation), and `wall_s` the whole command. On the CPU: 1 process with 1 thread,
1 process with N threads, N ranks with 1 thread each (gloo); with --device cuda: 1 GPU vs N GPUs (one rank
each). Rounds alternate the configurations, so a load that changes over time hits all of them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def command(root: str, out: Path, limit: int, ranks: int, threads: int, device: str, views: str) -> list[str]:
    launch = [sys.executable, "-m", "robustfer"] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m", "robustfer"]
    return launch + ["train", "--dataset", "ferplus", "--root", root, "--out", str(out), "--method", "ce",
                     "--model", "compact_s", "--limit", str(limit), "--batch-size", "128", "--epochs", "1",
                     "--eval-split", "valid", "--eval-limit", "256", "--select-split", "test", "--device", device,
                     "--threads", str(threads), "--quiet", *(["--ddp-views", views] if ranks > 1 else [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ferplus"))
    ap.add_argument("--limit", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = args.ranks
    if args.device == "cpu":
        configs = [("1 process, 1 thread", 1, 1, "shard"), (f"1 process, {n} threads", 1, n, "shard"),
                   (f"{n} ranks x 1 thread (shard views)", n, 1, "shard")]
    else:
        configs = [("1 GPU", 1, 1, "shard"), (f"{n} GPUs (shard views)", n, 1, "shard")]
    runs: dict[str, list[dict]] = {c[0]: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, ranks, threads, views in configs:
                out = Path(tmp) / f"{r}_{ranks}_{threads}"
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                t0 = time.perf_counter()
                p = subprocess.run(command(args.root, out, args.limit, ranks, threads, args.device, views), env=env,
                                   capture_output=True, text=True, cwd=REPO)
                wall = time.perf_counter() - t0
                if p.returncode:
                    sys.exit(f"{name}: exit {p.returncode}\n{p.stderr[-3000:]}")
                row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
                runs[name].append({"images_per_s": row["images_per_s"], "wall_s": wall, "train_loss": row["train_loss"]})
                print(f"round {r + 1}: {name:36s} {row['images_per_s']:7.1f} img/s  (command {wall:5.1f} s, "
                      f"loss {row['train_loss']:.4f})", flush=True)
    base = np.median([x["images_per_s"] for x in runs[configs[0][0]]])
    print("\nmedian over rounds:")
    summary = {}
    for name, xs in runs.items():
        med = float(np.median([x["images_per_s"] for x in xs]))
        summary[name] = {"images_per_s_median": med, "speedup_vs_first": med / base,
                         "wall_s_median": float(np.median([x["wall_s"] for x in xs])), "runs": xs}
        print(f"  {name:36s} {med:7.1f} img/s  x{med / base:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"limit": args.limit, "ranks": n, "device": args.device,
                                               "cpus": os.cpu_count(), "configs": summary}, indent=2))


if __name__ == "__main__":
    main()
