"""Batched augmentation on the device: every op draws its random parameters PER SAMPLE.

Input and output are float batches N x C x H x W in [0, 1] unless a function says otherwise; the
random source is an explicit torch.Generator on the batch's device, so runs are reproducible and a
resumed run continues the same random stream.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RAFDB = ((0.577, 0.4494, 0.4001), (0.2628, 0.2395, 0.2383))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
NORMS = {"imagenet": IMAGENET, "rafdb": RAFDB, "half": HALF}


def rand(n: int, g: torch.Generator, device) -> torch.Tensor:
    """n uniform numbers in [0, 1) from generator g."""
    return torch.rand(n, generator=g, device=device)


def to_float(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 N x C x H x W -> float in [0, 1] with `channels` channels (grey repeated, or RGB averaged)."""
    x = x.float().div_(255)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    return x.mean(1, keepdim=True)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size (a no-op at the stored size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def normalize(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Subtract mean, divide by std of the named normalisation (grey images use the channel means)."""
    mean, std = NORMS[norm]
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype)
    std = torch.tensor(std, device=x.device, dtype=x.dtype)
    if x.shape[1] == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability p."""
    m = rand(x.shape[0], g, x.device) < p
    return torch.where(m.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: torch.Tensor, g: torch.Generator, padding: int, fill: float | str = 0.0) -> torch.Tensor:
    """Pad by `padding` (constant `fill` or 'reflect') and take a random crop of the original size per sample."""
    n, c, h, w = x.shape
    if padding == 0:
        return x
    if fill == "reflect":
        xp = F.pad(x, (padding,) * 4, mode="reflect")
    else:
        xp = F.pad(x, (padding,) * 4, value=float(fill))
    span, wp = 2 * padding + 1, w + 2 * padding
    dy = (rand(n, g, x.device) * span).long()
    dx = (rand(n, g, x.device) * span).long()
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    # one gather over the flattened padded image: index (dy + i) * wp + dx + j per sample
    flat = ((dy.view(n, 1, 1) + ar_h.view(1, h, 1)) * wp + dx.view(n, 1, 1) + ar_w.view(1, 1, w)).view(n, 1, h * w)
    return xp.reshape(n, c, -1).gather(2, flat.expand(n, c, h * w)).view(n, c, h, w)


def gaussian_noise(x: torch.Tensor, g: torch.Generator, std: float, p: float = 1.0) -> torch.Tensor:
    """Add N(0, std) pixel noise (std in 0-255 units) with probability p per sample, clipped to [0, 1]."""
    m = (rand(x.shape[0], g, x.device) < p).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * (std / 255.0)
    return torch.where(m, (x + noise).clamp_(0, 1), x)


def flip_or_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SCN/RUL/CE augmentation: with p 0.5 EITHER a mirror OR Gaussian noise (std sqrt(30)), 50/50."""
    n = x.shape[0]
    apply = rand(n, g, x.device) < 0.5
    use_flip = rand(n, g, x.device) < 0.5
    noisy = (x + torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * (math.sqrt(30) / 255)).clamp(0, 1)
    out = torch.where((apply & use_flip).view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where((apply & ~use_flip).view(-1, 1, 1, 1), noisy, out)


def random_erasing(x: torch.Tensor, g: torch.Generator, p: float = 0.5, scale=(0.02, 0.33),
                   ratio=(0.3, 3.3), value: float = 0.0) -> torch.Tensor:
    """torchvision RandomErasing per sample: a rectangle of area `scale`, aspect `ratio`, set to `value`.

    One draw per sample (torchvision retries up to 10 times when the box does not fit; here the box
    is clipped to fit instead, so the erased area can be slightly smaller at extreme aspect ratios).
    """
    n, _, h, w = x.shape
    dev = x.device
    area = h * w * (scale[0] + (scale[1] - scale[0]) * rand(n, g, dev))
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(n, g, dev)
    ar = torch.exp(logr)
    eh = torch.sqrt(area * ar).round().clamp(1, h)
    ew = torch.sqrt(area / ar).round().clamp(1, w)
    top = ((h - eh + 1) * rand(n, g, dev)).floor()
    left = ((w - ew + 1) * rand(n, g, dev)).floor()
    apply = rand(n, g, dev) < p
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    box = ((ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
           & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1)) & apply.view(n, 1, 1))
    return x.masked_fill(box.unsqueeze(1), value)


def test_transform(x: torch.Tensor, size: int, channels: int, norm: str) -> torch.Tensor:
    """uint8 batch -> test input: resize to the model size and normalise; no crop, no TTA (methods.md)."""
    return normalize(resize(to_float(x, channels), size), norm)
