"""DNFER: dynamic adaptive threshold + symmetric-KL consistency (methods.md §2; arXiv 2208.10221;
Naveen-siva-kumar/DNFER `algorithm/noisyfer_aug.py`, `algorithm/loss.py`).

One head. Warm-up (epoch < 5): mean of the two views' mean CE. Then, per view, tau_c = batch mean of
clamp(p, 1e-8, 1-1e-8)_{.,c}; L_sup^v = MEAN CE over {p~_y >= tau_y} (whole-batch mean CE if empty);
L_con = batch mean of KL_2(p^w||p^s) + KL_2(p^s||p^w) (both directions, base 2, no stop-gradient);
L = (1 - alpha) (L_sup^w + L_sup^s)/2 + alpha L_con, alpha = 0.5.

Choices where the spec is silent: the views are the method's own under every recipe; the comparison is
the official exact `>=` (no tolerance: with the 1e-8 clamp ties are practically absent); log2 takes
probabilities clamped at float32's smallest normal (the official gives NaN on underflow);
`flagged_noisy` = not confident in the weak view (view 1 of the code) after warm-up, all False during
warm-up; `label_prob` is the weak-view probability of the given label (diagnostic).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer import augment as A
from robustfer import randaugment as RA
from robustfer.methods.base import Batch, Method, State, ViewSpec

CLAMP = (1e-8, 1 - 1e-8)  # loss.py eps = 1e-8


def clamped_probs(logits: torch.Tensor) -> torch.Tensor:
    """p~ = clamp(softmax(z), 1e-8, 1 - 1e-8) in float32, without gradient (selection only)."""
    return logits.detach().float().softmax(1).clamp(*CLAMP)


def confident_mask(p_tilde: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """{i : p~_{i,y_i} >= tau_{y_i}}, tau_c = batch mean of p~_{.,c} (Sai_weighted_CCE `avg_post`)."""
    tau = p_tilde.mean(0)
    return p_tilde.gather(1, labels.view(-1, 1)).squeeze(1) >= tau[labels]


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, confident: torch.Tensor) -> torch.Tensor:
    """MEAN CE over the confident samples; whole-batch mean CE when none is confident."""
    z = logits.float()
    if bool(confident.any()):
        return F.cross_entropy(z[confident], labels[confident])
    return F.cross_entropy(z, labels)


def symmetric_kl2(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Batch mean of sum_c [p (log2 p - log2 q) + q (log2 q - log2 p)] (loss.py `symmetric_kl_div`, no 1/2)."""
    tiny = torch.finfo(torch.float32).tiny
    lp, lq = p.clamp_min(tiny).log2(), q.clamp_min(tiny).log2()
    return ((p * (lp - lq)).sum(1) + (q * (lq - lp)).sum(1)).mean()


class DNFER(Method):
    name = "dnfer"
    summary = "dynamic per-batch class threshold + base-2 symmetric-KL weak/strong consistency"
    paper = "Gera et al., DNFER (arXiv 2208.10221)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    # methods.md recipe: Adam backbone 1e-3, classifier 1e-2, no decay, lr_e = lr_0 * 0.95^e, batch 128 dl, 40 ep.
    # Its classifier learns at 10x the backbone lr; validated only under the official Adam recipe.
    cpu_recipe_ok = False
    recipe = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "exp", "gamma": 0.95,
              "batch_size": 128, "epochs": 40, "norm": "imagenet", "drop_last": True}
    views = ("weak", "strong")

    def __init__(self, warmup: int = 5, alpha: float = 0.5, head_lr_mult: float = 10.0, **options):
        super().__init__(**options)
        self.warmup, self.alpha, self.head_lr_mult = int(warmup), float(alpha), float(head_lr_mult)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Backbone at lr, classifier at head_lr_mult * lr (official Adam groups 1e-3 / 1e-2)."""
        return [{"params": list(model.backbone.parameters()), "lr": lr},
                {"params": list(model.fc.parameters()), "lr": lr * self.head_lr_mult}]

    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        """Weak = reflect-pad 4*size/224 + random crop + flip; strong = own crop/flip + RandomAugment(2, 10)
        (grey 128 fill) + Cutout 16*size/224 grey 128, at the model's input size, then normalised."""
        f = A.resize(A.to_float(x, spec.channels), spec.size)
        weak, strong = RA.weak_strong(f, g, RA.DNFER)
        return {"weak": A.normalize(weak, spec.norm), "strong": A.normalize(strong, spec.norm)}

    def loss_terms(self, model: nn.Module, batch: Batch, state: State) -> tuple[dict[str, torch.Tensor], dict]:
        """Weighted loss parts ('sup' = (1-alpha) L_sup, 'con' = alpha L_con after warm-up) and statistics."""
        y = batch.labels
        z_w, z_s = model(batch.views["weak"]), model(batch.views["strong"])  # separate passes (own BN stats)
        label_prob = z_w.detach().float().softmax(1).gather(1, y.view(-1, 1)).squeeze(1)
        if state.epoch < self.warmup:
            ce = (F.cross_entropy(z_w.float(), y) + F.cross_entropy(z_s.float(), y)) / 2
            return {"sup": ce}, {"flagged_noisy": torch.zeros_like(y, dtype=torch.bool), "label_prob": label_prob}
        conf_w = confident_mask(clamped_probs(z_w), y)
        conf_s = confident_mask(clamped_probs(z_s), y)
        sup = (supervised_loss(z_w, y, conf_w) + supervised_loss(z_s, y, conf_s)) / 2
        con = symmetric_kl2(z_w.float().softmax(1), z_s.float().softmax(1))
        terms = {"sup": (1 - self.alpha) * sup, "con": self.alpha * con}
        return terms, {"flagged_noisy": ~conf_w, "label_prob": label_prob}

    def loss(self, model: nn.Module, batch: Batch, state: State):
        terms, stats = self.loss_terms(model, batch, state)
        return sum(terms.values()), stats
