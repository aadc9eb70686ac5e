"""The objective interface of label-free pre-training, and the view helpers the objectives share.

An objective owns the backbone it pre-trains plus its own auxiliary parts (a decoder, projector or
predictor) and turns a uint8 image batch into a scalar loss. It is given images and a random generator
only: no labels, indices or annotations reach it (the runner holds none), so a pre-trained checkpoint
can never have seen a label.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from robustfer import augment as A
from robustfer import randaugment as R
from robustfer.methods.base import ViewSpec

# Parameters an AdamW objective leaves out of weight decay besides biases and norm weights (timm/MAE).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token")


class Objective(nn.Module):
    """Base class. Subclasses set `name`, `summary`, `paper`, `recipe`, `options`, and implement `loss`.

    `recipe`: defaults of the optimisation (optimizer adamw|sgd, base_lr for batch 256 scaled linearly with
    the batch size as both papers do, weight_decay, batch_size, epochs, warmup_fraction = the share
    of the epochs spent warming up linearly).
    `options`: the names of the objective's own keyword options (PretrainConfig fields)."""

    name = "base"
    summary = ""
    paper = ""
    recipe: dict = {}
    options: tuple[str, ...] = ()
    decay_everything = False      # True: weight decay on every parameter (SimSiam's SGD); else timm/MAE's rule
    all_parameters_every_step = True  # every parameter gets a gradient in every step (DDP: no unused search)

    def __init__(self, backbone: nn.Module, spec: ViewSpec):
        super().__init__()
        self.backbone = backbone
        self.spec = spec

    def loss(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: uint8 N x C x H x W images on the device; g: the run's generator. -> (scalar loss,
        {name: scalar tensor} figures averaged per epoch into metrics.jsonl)."""
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Decayed and undecayed groups; a group with `fixed_lr` keeps its learning rate constant."""
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            skip = not self.decay_everything and (p.ndim <= 1 or n.rsplit(".", 1)[-1] in NO_DECAY_NAMES)
            (no_decay if skip else decay).append(p)
        return [g for g in ({"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision RandomResizedCrop per sample, back to the same size (bilinear): a box of area
    `scale` x the image, aspect `ratio`, at a random place. One draw per sample; a box wider or taller than the
    image is clipped to it (torchvision retries up to 10 times instead). Uses randaugment.warp's
    per-sample affine resampling."""
    n, _, h, w = x.shape
    dev = x.device
    area = scale[0] + (scale[1] - scale[0]) * A.rand(n, g, dev)
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * A.rand(n, g, dev)
    ar = torch.exp(logr)
    sx = torch.sqrt(area * ar).clamp(max=1.0).double()     # box width / image width
    sy = torch.sqrt(area / ar).clamp(max=1.0).double()
    tx = (1 - sx) * w * A.rand(n, g, dev).double()         # box top-left in pixels
    ty = (1 - sy) * h * A.rand(n, g, dev).double()
    zero = torch.zeros_like(sx)
    return R.warp(x, R._affine(sx, zero, tx, zero, sy, ty), 0.0, "bilinear")


def brightness_contrast(x: torch.Tensor, g: torch.Generator, strength: float = 0.4, p: float = 0.8) -> torch.Tensor:
    """ColorJitter's brightness and contrast (factors in [1 - s, 1 + s]) with probability p per sample,
    brightness first (randaugment's PIL-exact enhance ops)."""
    n, dev = x.shape[0], x.device
    on = A.rand(n, g, dev) < p
    fb = torch.where(on, 1 - strength + 2 * strength * A.rand(n, g, dev), torch.ones(n, device=dev))
    fc = torch.where(on, 1 - strength + 2 * strength * A.rand(n, g, dev), torch.ones(n, device=dev))
    return R.contrast(R.brightness(x, fb), fc)


def finish(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """Float [0, 1] view -> network input at the model's size and normalisation (as train's views)."""
    return A.normalize(A.resize(x, spec.size), spec.norm)
