"""EAC — Erasing Attention Consistency (ECCV 2022; methods.md §6; zyh-uaiaaaa/Erasing-Attention-Consistency
`src/model.py`, `src/loss.py`, `src/main.py`, `src/dataset.py`).

Class activation maps on the last conv map F (C' x h x w): M(x)_k = sum_c W_kc F_c(x) for all C classes k,
W = the classifier's weight DETACHED, no bias, no normalisation. flip = the exact horizontal mirror of a
map. Loss

    L = CE_mean(z(x), y) + 5 * MSE(M(x), flip(M(x'))),

the MSE a mean over all N C h w elements, gradient into both views; CE on x only. Views (noisy-label mode,
the official one whenever the label file is not the clean list; option `views="noisy"`, the default):
x = Erase(IN(Resize(x_raw + Gaussian noise std sqrt(30) with p 0.5))), never flipped; x' =
Erase'(IN(Resize(hflip(x_raw)))), no noise, erased independently; Erase = RandomErasing(p 0.5, scale
(0.02, 0.25)). `views="clean"` (the official clean-label mode): x' = the mirror of x's final tensor (same
noise, same erasing). Each view is its own forward pass (per-view BatchNorm statistics).

Choices where the spec is silent: the pixel noise is added at the stored resolution and truncated to
integer levels (as NLA's, from the same cv2 code); under `--recipe cpu` x is the shared random crop
(never flipped) and x' its exact mirror, so tables compare losses, not augmentations. Stats: `argmax` (the
class of x; EAC has no per-sample trust signal).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer import augment as A
from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State, ViewSpec
from robustfer.methods.ce import CE
from robustfer.methods.nla import pixel_noise_uint8
from robustfer.models.cam import class_activation_maps


class EACNet(nn.Module):
    """Conv backbone + linear classifier on the pooled map; forward = the logits, `cam_logits` adds the CAMs."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        if not hasattr(backbone, "forward_map"):
            raise RobustferError("eac needs a convolutional backbone with a feature map (compact*, resnet*), not a ViT")
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_dim, num_classes)

    def cam_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits N x C, CAMs N x C x h x w with the classifier weight detached)."""
        fmap = self.backbone.forward_map(x)
        cams = class_activation_maps(fmap, self.fc.weight.detach())  # models/cam.py: explain draws the same maps
        return self.fc(fmap.mean((2, 3))), cams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


def consistency_loss(cams: torch.Tensor, cams_flipped_view: torch.Tensor) -> torch.Tensor:
    """MSE(M(x), flip(M(x'))): mean over all N C h w elements."""
    return F.mse_loss(cams.float(), cams_flipped_view.float().flip(-1))


class EAC(Method):
    name = "eac"
    summary = "CE + consistency of the class activation maps of an image and its erased mirror (weight 5)"
    paper = "Erasing Attention Consistency, ECCV 2022 (zyh-uaiaaaa/Erasing-Attention-Consistency)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    # ResNet-18 recipe: lr 2e-4, batch 32 (maintainer, issues #3, #19, #20)
    recipe = {**CE.recipe, "batch_size": 32}

    def __init__(self, lam: float = 5.0, views: str = "noisy", **options):
        super().__init__(**options)
        if views not in ("noisy", "clean"):
            raise RobustferError(f"eac option views must be 'noisy' or 'clean', not {views!r}")
        self.lam, self.views = float(lam), views

    def build(self, backbone: nn.Module, num_classes: int, classes=None, spec=None) -> nn.Module:
        return EACNet(backbone, num_classes)

    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        f = A.to_float(x, spec.channels)
        if spec.recipe != "official":
            v = A.normalize(A.resize(A.random_crop(f, g, max(1, round(f.shape[-1] / 12))), spec.size), spec.norm)
            return {"x": v, "x_flip": v.flip(-1)}

        def erase(t):
            return A.random_erasing(A.normalize(A.resize(t, spec.size), spec.norm), g, p=0.5, scale=(0.02, 0.25))

        noisy = pixel_noise_uint8(f, g)
        if self.views == "clean":
            v = erase(noisy)
            return {"x": v, "x_flip": v.flip(-1)}
        return {"x": erase(noisy), "x_flip": erase(f.flip(-1))}

    def loss(self, model, batch: Batch, state: State):
        z, cams = model.cam_logits(batch.views["x"])
        _, cams_flip = model.cam_logits(batch.views["x_flip"])  # a separate pass: per-view BatchNorm statistics
        loss = F.cross_entropy(z.float(), batch.labels) + self.lam * consistency_loss(cams, cams_flip)
        return loss, {"argmax": z.detach().argmax(1)}
