"""Training-step speed of the compact CNN by precision and memory format, to pick the per-device default.

    python benchmarks/precision.py [--device cpu|cuda] [--batch-size 128] [--steps 8]

Prints images/s of a CE forward+backward+SGD step for fp32 (NCHW), fp32 channels_last and bf16 autocast
channels_last (median of --steps timed steps after 2 warm-up steps).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from robustfer.models import create_model


def step_speed(device: torch.device, channels_last: bool, bf16: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model("compact", 8).to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 48, 48, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 8, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}")
    for name, cl, bf in (("fp32 NCHW", False, False), ("fp32 channels_last", True, False),
                         ("bf16 autocast channels_last", True, True)):
        print(f"{name:28s} {step_speed(dev, cl, bf, args.batch_size, args.steps):8.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
