"""SCN — Self-Cure Network (CVPR 2020; methods.md §6; kaiwang960112/Self-Cure-Network `src/train.py`).

An importance weight alpha_i = sigmoid(Linear(feature -> 1)) scales each sample's logits; the test-time
logits are alpha * z as well (argmax unchanged). Loss

    L = CE_mean(alpha_i z_i, y_i) + max(0, delta1 - (mean_high alpha - mean_low alpha)),

high = the floor(0.7 N) largest alphas of the batch (the last, partial batch included), low = the rest;
delta1 = 0.07 (the README's batch-64 value). Relabelling from epoch `warmup` (counted from 0; official 9 =
the 10th epoch, which bench scales with the epochs), in EVERY mini-batch, after the loss of that batch:
p = softmax(alpha z) of its training pass; each sample with max_c p_c - p_{y_i} > delta2 = 0.2 gets its
stored training label permanently replaced by argmax_c p (later batches train on it, and it may change
again). Test labels never change.

Choices where methods.md is silent: the stored labels are the method's state (`scn_labels`, -1 = the
given label), saved in the checkpoints so a resumed run relabels identically; the relabel check uses the
labels as they stood when the batch was drawn; `flagged_noisy` = the batch's low-importance group (the 30%
with the smallest alpha: what SCN treats as uncertain); stats `alpha`, `argmax`, and `relabelled` (1 where
the stored label now differs from the given one). Under `--recipe cpu` the views are the shared weak view.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.methods.base import Batch, Method, State, ViewSpec
from robustfer.methods.ce import CE
from robustfer.models import make_head


class SCNNet(nn.Module):
    """Backbone + importance head `alpha` + classifier `fc`; forward = alpha * fc(f), the official output."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.alpha = nn.Linear(backbone.feature_dim, 1)
        self.fc = make_head(backbone, num_classes)

    def weighted(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha N, alpha * logits N x C)."""
        f = self.backbone(x)
        pooled = f if f.dim() == 2 else f.mean(1)
        a = torch.sigmoid(self.alpha(pooled)).squeeze(1)
        return a, a.unsqueeze(1) * self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weighted(x)[1]


def rank_loss(alpha: torch.Tensor, margin: float, ratio: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(0, margin - (mean of the top floor(ratio N) alphas - mean of the rest)), low-group mask)."""
    n = alpha.shape[0]
    k = int(ratio * n)
    order = torch.argsort(alpha.detach(), descending=True)
    low = torch.zeros(n, dtype=torch.bool, device=alpha.device)
    low[order[k:]] = True
    if k == 0 or k == n:  # one group is empty: no ranking to enforce
        return alpha.sum() * 0.0, low
    return F.relu(margin - (alpha[~low].mean() - alpha[low].mean())), low


def relabel(probs: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new labels, changed mask): argmax where max_c p_c - p_y > margin, else the label."""
    pmax, pred = probs.max(1)
    change = pmax - probs.gather(1, labels.view(-1, 1)).squeeze(1) > margin
    return torch.where(change, pred, labels), change


def current_labels(state: State, key: str, batch: Batch) -> torch.Tensor:
    """The batch's training labels as they stand now: relabelled ones (state.tensors[key] >= 0) replaced."""
    store = state.tensors.get(key)
    if store is None:
        return batch.labels
    s = store[batch.index]
    return torch.where(s >= 0, s, batch.labels)


def relabel_batch(state: State, key: str, batch: Batch, labels: torch.Tensor, probs: torch.Tensor,
                  margin: float) -> torch.Tensor:
    """SCN's rule on the batch: store the new labels in state.tensors[key] (-1 = the given label stands),
    created on first use; returns the `relabelled` stat (1 where the stored label differs from the given one)."""
    new, _ = relabel(probs, labels, margin)
    store = state.tensors.setdefault(key, torch.full((state.num_train,), -1, dtype=torch.long, device=labels.device))
    store[batch.index] = torch.where(new == batch.labels, torch.full_like(new, -1), new)
    return (store[batch.index] >= 0).float()


class SCN(Method):
    name = "scn"
    summary = "importance weights on the logits + rank regularisation; relabels confidently contradicted labels"
    paper = "Self-Cure Network, CVPR 2020 (kaiwang960112/Self-Cure-Network)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    recipe = {**CE.recipe, "lr": 1e-3, "epochs": 70}  # torch Adam default lr; 70 epochs

    def __init__(self, margin_1: float = 0.07, margin_2: float = 0.2, ratio: float = 0.7, warmup: int = 9,
                 relabel: bool = True, **options):
        super().__init__(**options)
        self.margin_1, self.margin_2, self.ratio = float(margin_1), float(margin_2), float(ratio)
        self.warmup, self.relabel = int(warmup), bool(relabel)

    def build(self, backbone: nn.Module, num_classes: int, classes=None, spec=None) -> nn.Module:
        return SCNNet(backbone, num_classes)

    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        return CE.make_views(self, x, g, spec)  # flip-or-noise + erasing, as CE (official)

    def stored_labels(self, batch: Batch, state: State) -> torch.Tensor:
        """The batch's training labels as they stand now (relabelled ones replaced)."""
        return current_labels(state, "scn_labels", batch)

    def loss(self, model, batch: Batch, state: State):
        labels = self.stored_labels(batch, state)
        alpha, z = model.weighted(batch.views["weak"])
        l_rr, low = rank_loss(alpha.float(), self.margin_1, self.ratio)
        loss = F.cross_entropy(z.float(), labels) + l_rr
        stats = {"alpha": alpha.detach().float(), "flagged_noisy": low.float(), "argmax": z.detach().argmax(1)}
        if self.relabel and state.epoch >= self.warmup:
            stats["relabelled"] = relabel_batch(state, "scn_labels", batch, labels, z.detach().float().softmax(1),
                                                self.margin_2)
        return loss, stats
