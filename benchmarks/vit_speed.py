"""Training-step speed of registered models: img/s of one CE step (forward + backward + Adam step, the
network's extra_loss included), batch 128, fp32, channels_last as the trainer runs it; median of S timed
steps after 2 warm-up steps, R interleaved rounds (so a load change hits every model alike).

    T=1 S=8 R=3 .venv/bin/python benchmarks/vit_speed.py compact_s vit_s vit_lq
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from robustfer.models import create_model, extra_loss


def step_speed(name: str, steps: int, batch: int = 128) -> float:
    """img/s of a CE training step of model `name` (8 classes, 48 px grey input)."""
    torch.manual_seed(0)
    m = create_model(name, 8).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch) % 8
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y) + extra_loss(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times[2:])


def main() -> None:
    torch.set_num_threads(int(os.environ.get("T", "2")))
    steps, rounds = int(os.environ.get("S", "10")), int(os.environ.get("R", "3"))
    names = sys.argv[1:] or ["compact_s", "vit_s", "vit_lq"]
    res: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names:
            res[n].append(step_speed(n, steps))
            print(f"round {r} {n:10s} {res[n][-1]:6.1f} img/s", flush=True)
    base = statistics.median(res[names[0]])
    for n in names:
        med = statistics.median(res[n])
        print(f"{n:10s} median {med:6.1f} img/s  {med / base:.2f}x {names[0]}")


if __name__ == "__main__":
    main()
