"""Streaming vs in-memory training images (issue 19): `--data-in-memory no` reads each batch's rows from the
memory-mapped decoded cache (read-ahead thread) instead of holding the whole uint8 array in memory.

    python benchmarks/stream.py [--n 200000] [--dir DIR] [--json F]

Generates a folder-layout data set of N 48x48 grey PNGs (7 classes) in DIR (default
$TMPDIR/robustfer-stream-bench; reused when present; never inside the repository), decodes it once into
robustfer's cache (DIR/cache), then measures in a fresh process per mode, through the trainer's own code
(Run, batch_views, train_epoch):
  - setup: seconds to build the run (read the split, place the images); memory: the process's anonymous
    resident memory (its own copies) and file-backed resident memory (memory-mapped pages: the kernel may
    drop them and read them again), after setup and at the end;
  - read: one epoch of batches' rows moved to the device, nothing else (what streaming changes): images/s;
  - data path: one epoch of batches (read + augment, the CE weak view), no model: images/s;
  - training: --steps CE steps of compact_s (forward, backward, SGD): images/s;
modes: memory (--data-in-memory yes), stream (no; the file in the page cache), stream-cold (no; the cache
file's pages dropped first with posix_fadvise DONTNEED, so the reads go to the disk).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def generate(root: Path, n: int, test: int = 700) -> None:
    """N training and `test` test PNGs: class k = a brighter band at rows 6k..6k+5 over smooth noise."""
    from PIL import Image

    done = root / "DONE"
    if done.exists() and done.read_text().strip() == str(n):
        return
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for split, count in (("train", n), ("test", test)):
        for k, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            k = i % len(CLASSES)
            a = np.kron(rng.integers(0, 120, (12, 12)), np.ones((4, 4))).astype(np.uint8)
            a[6 * k:6 * k + 6] += 100
            Image.fromarray(a, "L").save(root / split / CLASSES[k] / f"{i:07d}.png", compress_level=1)
            if i and i % 50000 == 0:
                print(f"  {split}: {i} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    done.write_text(str(n))
    print(f"generated {n} + {test} images in {root} ({time.perf_counter() - t0:.0f} s)", flush=True)


def config(root: Path, out: Path, mode: str, batch: int, threads: int):
    from robustfer.train import TrainConfig

    return TrainConfig(dataset="folder", root=str(root), out=str(out), method="ce", model="compact_s", epochs=1,
                       batch_size=batch, select_split="test", device="cpu", precision="fp32", data_in_memory=mode,
                       seed=1, threads=threads)


def drop_page_cache(cache_dir: Path) -> int:
    """Ask the kernel to drop the cached pages of the decoded .npy files (clean pages: no root needed)."""
    dropped = 0
    for p in cache_dir.glob("*.npy"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            dropped += p.stat().st_size
        finally:
            os.close(fd)
    return dropped


def rss_mb() -> dict:
    """This process's resident memory now: anonymous (its own copies) and file-backed (memory-mapped pages, which
    the kernel may drop and read again), MB (Linux /proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def measure(root: Path, mode: str, batch: int, steps: int, threads: int) -> dict:
    """One mode in this process: setup, one epoch of the data path, `steps` training steps."""
    import torch

    from robustfer.data.stream import plan
    from robustfer.train.progress import EpochProgress
    from robustfer.train.trainer import Run

    cache = Path(os.environ["ROBUSTFER_CACHE"])
    res = {"mode": mode, "torch_threads": torch.get_num_threads()}
    if mode == "stream-cold":
        res["dropped_bytes"] = drop_page_cache(cache)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run = Run(config(root, Path(out), "yes" if mode == "memory" else "no", batch, threads), quiet=True)
        res["setup_s"] = time.perf_counter() - t0
        res["rss_after_setup_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["after_setup"] = rss_mb()
        res["train_images"], res["images_gb"] = len(run.labels), run.train_data.images.nbytes / 2**30
        if mode == "stream-cold":
            drop_page_cache(cache)
        n, bs = len(run.labels), run.batch_size
        steps_all = n // bs
        # reading alone: one epoch of batches' rows moved to the device (the part streaming changes)
        perm = run.epoch_order(n)
        keys = [run.rows_read(perm[b * bs:(b + 1) * bs]) for b in range(steps_all)]
        plan(run.images, keys)
        t0 = time.perf_counter()
        for k in keys:
            x = run.images[k]
        res["read_img_s"] = steps_all * bs / (time.perf_counter() - t0)
        if mode == "stream-cold":
            drop_page_cache(cache)
        # the data path: one epoch of the trainer's batches and views (read + augment), no model
        perm = run.epoch_order(n)
        plan(run.images, [run.rows_read(perm[b * bs:(b + 1) * bs]) for b in range(steps_all)])
        t0 = time.perf_counter()
        for b in range(steps_all):
            views, idx, mine, g = run.batch_views(perm[b * bs:(b + 1) * bs])
            views = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views.items()}
        res["data_path_img_s"] = steps_all * bs / (time.perf_counter() - t0)
        # training: the first `steps` steps of an epoch (train_epoch with its step count capped)
        if mode == "stream-cold":
            drop_page_cache(cache)
        run.steps_per_epoch = steps
        with EpochProgress(quiet=True) as progress:
            progress.start("bench", steps * bs)
            row = run.train_epoch(progress)
        res["train_img_s"] = row["images_per_s"]
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["at_end"] = rss_mb()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="training images (default 200000)")
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "robustfer-stream-bench"))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="training steps timed per mode (default 40)")
    ap.add_argument("--modes", default="memory,stream,stream-cold")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared machine two "
                    "threads' parallel regions wait for each other's time slices)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one mode in this process
    args = ap.parse_args()
    base = Path(args.dir).resolve()
    root, cache = base / "data", base / "cache"
    if Path(__file__).resolve().parents[1] in base.parents:
        sys.exit(f"--dir {base} lies inside the repository: use a temporary or cache folder")
    os.environ["ROBUSTFER_CACHE"] = str(cache)
    if args.measure:
        print(json.dumps(measure(root, args.measure, args.batch_size, args.steps, args.threads)))
        return
    generate(root, args.n)
    from robustfer.data import load_dataset

    t0 = time.perf_counter()
    d = load_dataset("folder", root, "train")  # decode once into the cache (a hit later)
    print(f"decoded cache: {d.images.shape} {type(d.images).__name__}, {d.images.nbytes / 2**30:.2f} GiB "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    del d
    results = []
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--dir", str(base), "--batch-size", str(args.batch_size),
                              "--steps", str(args.steps), "--threads", str(args.threads), "--measure", mode],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{mode:12s} setup {r['setup_s']:6.1f} s  anon RSS {r['at_end'].get('RssAnon', -1):6.0f} MB  read {r['read_img_s']:9.0f} "
              f"img/s  data path {r['data_path_img_s']:8.0f} img/s  training {r['train_img_s']:6.0f} img/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "batch_size": args.batch_size, "steps": args.steps,
                                               "threads": args.threads, "load_avg_1m": os.getloadavg()[0],
                                               "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
