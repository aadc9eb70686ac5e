"""RUL — Relative Uncertainty Learning (NeurIPS 2021; methods.md §6; zyh-uaiaaaa/Relative-Uncertainty-Learning
`src/rul.py`, `src/utils.py`, `src/main.py`).

On the backbone's conv map F (C' x h x w), two separate identical heads give mu_i and logvar_i: each
BatchNorm2d(C', eps 2e-5, affine=False) -> Dropout(0.4) -> Flatten -> Linear(C' h w -> 64) ->
BatchNorm1d(64, eps 2e-5); FC = Linear(64 -> C). s_i = mean over the 64 dims of exp(logvar_i); partner
j = randperm(N)[i] (self-pairs possible); w_i = s_i / (s_i + s_j), w_j = s_j / (s_i + s_j);
z = w_i mu_i + w_j mu_j; the "add-up" loss L = 0.5 CE_mean(FC(z), y_i) + 0.5 CE_mean(FC(z), y_j). Nothing
is detached: logvar learns only through the mixing weights. Test logits: FC(mu), eval mode.

Noisy labels: the official code has no noise handling; its maintainer combines RUL with SCN's relabel
rule (issue #4), so robustfer applies it with p = softmax(FC(mu_i)) of the training pass (its own choice:
the official pass outputs only mixed features), from epoch `warmup` (default 9, as SCN; bench scales it),
with delta2 = 0.2 (`relabel=false` turns it off). The relabel state is `rul_labels` (-1 = the given label),
saved in the checkpoints.

Choices where the spec is silent: h x w is the map at the model's input size (7 x 7 for ResNet-18 at 224,
3 x 3 for compact_s at 48), found by one dry pass at build time; the partner permutation comes from the
trainer's seeded generator; the official exp(logvar) acts as a mixing WEIGHT (the larger s_i, the more
sample i counts), so the uncertainty robustfer logs is its inverse, u_i = 1 / s_i: the sample of a pair with
the lower uncertainty gets the larger weight. Stats `uncertainty` (u_i, the per-sample trust signal), `argmax` (FC(mu)'s class) and `relabelled`. Views: flip-or-noise + erasing (CE's).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State, ViewSpec
from robustfer.methods.ce import CE
from robustfer.methods.scn import current_labels, relabel_batch

EMBED = 64


def map_shape(backbone: nn.Module, spec: ViewSpec) -> tuple[int, int, int]:
    """(C', h, w) of backbone.forward_map at the spec's input size (one dry pass, eval mode, no grad)."""
    if not hasattr(backbone, "forward_map"):
        raise RobustferError("rul needs a convolutional backbone with a feature map (compact*, resnet*), not a ViT")
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        m = backbone.forward_map(torch.zeros(1, spec.channels, spec.size, spec.size))
    backbone.train(was)
    return tuple(m.shape[1:])


def gaussian_head(shape: tuple[int, int, int], dropout: float = 0.4) -> nn.Sequential:
    c, h, w = shape
    return nn.Sequential(nn.BatchNorm2d(c, eps=2e-5, affine=False), nn.Dropout(dropout), nn.Flatten(),
                         nn.Linear(c * h * w, EMBED), nn.BatchNorm1d(EMBED, eps=2e-5))


class RULNet(nn.Module):
    """Backbone + mu / logvar heads + FC; forward = FC(mu), the test logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, shape: tuple[int, int, int]):
        super().__init__()
        self.backbone = backbone
        self.mu = gaussian_head(shape)
        self.logvar = gaussian_head(shape)
        self.fc = nn.Linear(EMBED, num_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.backbone.forward_map(x)
        return self.mu(m), self.logvar(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x)[0])


def mixing_weights(s: torch.Tensor, partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_i, w_j) = (s_i, s_j) / (s_i + s_j), s = mean exp(logvar) (official); they sum to 1, and the sample
    with the lower uncertainty 1 / s gets the larger one."""
    total = s + s[partner]
    return s / total, s[partner] / total


def add_up_loss(fc: nn.Module, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor,
                partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(0.5 CE(FC(z), y_i) + 0.5 CE(FC(z), y_j), uncertainty 1 / s) with z = w_i mu_i + w_j mu_j."""
    s = logvar.float().exp().mean(1)
    w_i, w_j = mixing_weights(s, partner)
    z = w_i.unsqueeze(1) * mu.float() + w_j.unsqueeze(1) * mu.float()[partner]
    out = fc(z).float()
    return 0.5 * F.cross_entropy(out, labels) + 0.5 * F.cross_entropy(out, labels[partner]), 1.0 / s


class RUL(Method):
    name = "rul"
    summary = "mean / uncertainty heads; pairs mixed by relative uncertainty, add-up loss; SCN's relabelling"
    paper = "Relative Uncertainty Learning, NeurIPS 2021 (zyh-uaiaaaa/Relative-Uncertainty-Learning)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    # backbone + heads 2e-4, FC 2e-3 (param_groups: head_lr_mult 10)
    recipe = CE.recipe

    def __init__(self, warmup: int = 9, margin_2: float = 0.2, relabel: bool = True, fc_lr_mult: float = 10.0,
                 **options):
        super().__init__(**options)
        self.warmup, self.margin_2, self.relabel = int(warmup), float(margin_2), bool(relabel)
        self.fc_lr_mult = float(fc_lr_mult)

    def build(self, backbone: nn.Module, num_classes: int, classes=None, spec=None) -> nn.Module:
        if spec is None:
            raise RobustferError("rul needs the input size to size its heads (ViewSpec)")
        return RULNet(backbone, num_classes, map_shape(backbone, spec))

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        rest = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
        return [{"params": rest, "lr": lr}, {"params": list(model.fc.parameters()), "lr": lr * self.fc_lr_mult}]

    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        return CE.make_views(self, x, g, spec)

    def loss(self, model, batch: Batch, state: State):
        labels = current_labels(state, "rul_labels", batch)
        mu, logvar = model.embed(batch.views["weak"])
        n = labels.shape[0]
        partner = torch.randperm(n, generator=batch.generator, device=labels.device) if batch.generator is not None \
            else torch.randperm(n, device=labels.device)
        loss, u = add_up_loss(model.fc, mu, logvar, labels, partner)
        logits = model.fc(mu).detach().float()
        stats = {"uncertainty": u.detach(), "argmax": logits.argmax(1)}
        if self.relabel and state.epoch >= self.warmup:
            stats["relabelled"] = relabel_batch(state, "rul_labels", batch, labels, logits.softmax(1), self.margin_2)
        return loss, stats
