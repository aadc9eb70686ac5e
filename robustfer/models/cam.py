"""Where a network looks: class activation maps (CAM) and Grad-CAM, shared by EAC's loss and `robustfer explain`.

CAM (Zhou et al., CVPR 2016): for a linear classifier W (C x C') on the mean-pooled conv map F (C' x h x w),
M_k = sum_c W_kc F_c (no bias, no normalisation): `class_activation_maps`, what EAC's consistency loss
compares (methods/eac.py, EACNet.cam_logits).

Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1-2): alpha_kc = mean_hw d z_k / d F_c(h, w), map =
ReLU(sum_c alpha_kc F_c). For any registered network, whatever its head (SCN's alpha-scaled logits, RUL's
Gaussian heads, the label-query decoder): `grad_cam`. On the CNNs' mean-pooled map with a linear head it is
exactly ReLU(CAM) / (h w), so both name the same picture (tests/infer/test_explain.py checks it).

ViTs (`vit_s`, `vit_lq`): Grad-CAM on the token map, the L = g x g patch tokens after the encoder's final
norm (N x L x D, read as a D-channel g x g map; alpha_kd = mean over tokens of d z_k / d token_d). Chosen
over attention rollout because it is class-specific and uses the same code path as the CNNs; with a linear
head on the mean token it is again CAM on the tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.errors import RobustferError


def class_activation_maps(fmap: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CAMs N x K x h x w of a conv map N x C' x h x w for classifier weight K x C': M_k = sum_c W_kc F_c.
    The weight is used as given (EAC passes it detached)."""
    return torch.einsum("kc,nchw->nkhw", weight.to(fmap.dtype), fmap)


def find_backbone(model: nn.Module) -> nn.Module:
    """The feature extractor inside a test-time network: the first module with `forward_map` (CNNs) or
    `forward_tokens` (ViTs)."""
    for m in model.modules():
        if callable(getattr(m, "forward_map", None)) or callable(getattr(m, "forward_tokens", None)):
            return m
    raise RobustferError(f"{model.__class__.__name__} has no backbone with a feature map (forward_map) or "
                         "token map (forward_tokens): heat maps need one of the registered models")


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """Patch tokens N x L x D -> N x D x g x g (L = g^2, row-major as timm's patch embedding)."""
    n, length, d = tokens.shape
    g = math.isqrt(length)
    if g * g != length:
        raise RobustferError(f"{length} tokens do not form a square grid: no heat map for this ViT")
    return tokens.transpose(1, 2).reshape(n, d, g, g)


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N x K, Grad-CAM maps N x h x w, >= 0, unnormalised) of the test-time network `model` (eval mode is
    the caller's choice) for normalised inputs `x`; `target` N class indices, default the predicted class.
    The backbone's map is captured by wrapping its `forward_map` / `forward_tokens` for this one call."""
    bb = find_backbone(model)
    name = "forward_map" if callable(getattr(bb, "forward_map", None)) else "forward_tokens"
    inner = getattr(bb, name)
    seen: list[torch.Tensor] = []

    def capture(inp):
        out = inner(inp)
        seen.append(out)
        return out

    setattr(bb, name, capture)
    try:
        with torch.enable_grad():
            logits = model(x)
            if not seen:
                raise RobustferError(f"{model.__class__.__name__} did not use its backbone's {name}: no heat map")
            fmap = seen[-1]
            t = logits.detach().argmax(1) if target is None else target.to(logits.device).long()
            score = logits.float().gather(1, t.view(-1, 1)).sum()   # each sample's logit depends on its own map only
            (grad,) = torch.autograd.grad(score, fmap)
    finally:
        delattr(bb, name)  # the class's method again
    fmap, grad = fmap.detach().float(), grad.float()
    if name == "forward_tokens":
        fmap, grad = tokens_to_map(fmap), tokens_to_map(grad)
    alpha = grad.mean((2, 3), keepdim=True)
    return logits.detach().float(), F.relu((alpha * fmap).sum(1))


def normalise_maps(maps: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Maps N x h x w scaled to [0, 1] per map (an all-zero map stays 0), bilinearly resized to size x size."""
    if size is not None and maps.shape[-1] != size:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)
