"""Data path speed: robustfer's tensor pipeline vs. the conventional per-sample pipeline of the official
method codes (PIL decode + torchvision transforms in a DataLoader), same model, same machine, one run.

    python benchmarks/data_path.py --root ../shared/data/ferplus [--limit N] [--device cpu|cuda]

Prints images/s of (a) the data path alone (producing every augmented, normalised batch of one epoch)
and (b) one whole CE training epoch of the compact CNN, for both pipelines, and their ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from robustfer import augment as A
from robustfer.data import load_dataset
from robustfer.models import create_model


class PngDataset(Dataset):
    """The conventional reader: open and decode the PNG for every sample, every epoch."""

    def __init__(self, root, files, labels, transform):
        self.paths = [os.path.join(root, f) for f in files]
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = Image.open(self.paths[i]).convert("L")
        return self.transform(img), int(self.labels[i])


def conventional_loader(data, root, batch_size, workers):
    import torchvision.transforms as T

    tf = T.Compose([T.RandomCrop(48, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.449], [0.226])])
    return DataLoader(PngDataset(root, data.files, data.labels, tf), batch_size=batch_size, shuffle=True,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0)


def tensor_batches(images, labels, batch_size, g, device):
    """robustfer's path: index the uint8 tensor on the device, augment the whole batch at once."""
    perm = torch.randperm(len(labels), generator=g, device=device)
    for b in range(len(labels) // batch_size):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        x = A.to_float(images[idx], 1)
        x = A.hflip(A.random_crop(x, g, 4), g)
        yield A.normalize(x, "imagenet"), labels[idx]


def run_epoch(batches, model, opt, device, train: bool) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        if train:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--limit", type=int, default=None, help="first N training images")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPU count)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    workers = os.cpu_count() if args.workers is None else args.workers
    data = load_dataset("ferplus", args.root, "train")
    if args.limit:
        data = data.subset(np.arange(args.limit))
    images = torch.from_numpy(np.array(data.images)).to(device)
    labels = torch.from_numpy(data.labels).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    model = create_model("compact", 8).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = conventional_loader(data, args.root, args.batch_size, workers)

    # warm up both paths (worker start-up, kernels) on a few batches
    for i, _ in zip(range(3), tensor_batches(images, labels, args.batch_size, g, device)):
        pass
    res = {"device": str(device), "images": len(labels), "batch_size": args.batch_size, "workers": workers,
           "torch_threads": torch.get_num_threads()}
    for name, batches in (("tensor", lambda: tensor_batches(images, labels, args.batch_size, g, device)),
                          ("conventional", lambda: iter(loader))):
        n, dt = run_epoch(batches(), model, opt, device, train=False)
        res[f"{name}_data_only_img_s"] = n / dt
        n, dt = run_epoch(batches(), model, opt, device, train=True)
        res[f"{name}_epoch_img_s"] = n / dt
        print(f"{name:12s} data path {res[f'{name}_data_only_img_s']:9.0f} img/s   whole epoch {res[f'{name}_epoch_img_s']:7.0f} img/s", flush=True)
    res["data_only_ratio"] = res["tensor_data_only_img_s"] / res["conventional_data_only_img_s"]
    res["epoch_ratio"] = res["tensor_epoch_img_s"] / res["conventional_epoch_img_s"]
    print(f"ratio (tensor / conventional): data path {res['data_only_ratio']:.1f}x, whole epoch {res['epoch_ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
