"""LDL (methods.md §5): KL(d || p) is minimal, zero, with zero gradient, exactly at the vote distribution;
one-hot d (majority mode, or no votes) makes it CE."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.methods import Batch, State, create_method
from robustfer.methods.ce import CE
from robustfer.methods.ldl import LDL

C = 8


class Logits(nn.Module):
    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z = nn.Parameter(z.clone().float())

    def forward(self, x):
        return self.z


def batch_of(labels, soft=None) -> Batch:
    labels = torch.tensor(labels)
    return Batch(views={"weak": torch.zeros(len(labels), 1, 4, 4)}, labels=labels, index=torch.arange(len(labels)),
                 soft=soft)


DIST = torch.tensor([[0.6, 0.3, 0.1, 0, 0, 0, 0, 0],     # FERPlus crossentropy-mode rows: zeros allowed
                     [0.125] * 8,
                     [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.65]])


def test_loss_is_zero_with_zero_gradient_at_the_vote_distribution_and_larger_elsewhere():
    m = create_method("ldl")
    b = batch_of([0, 0, 7], DIST)
    z_star = DIST.clamp_min(1e-30).log()  # p = d (p = 0 to float precision where d = 0)
    model = Logits(z_star)
    loss, _ = m.loss(model, b, State())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert model.z.grad.abs().max().item() < 1e-7  # the gradient (p - d) / N vanishes
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # any perturbation of the logits (other than adding a constant per row) raises it
        worse, _ = m.loss(Logits(z_star + 0.1 * torch.randn(3, C, generator=g)), b, State())
        assert worse.item() > loss.item() + 1e-4


def test_loss_is_kl_batchmean():
    z = torch.randn(3, C, generator=torch.Generator().manual_seed(1))
    loss, _ = create_method("ldl").loss(Logits(z), batch_of([0, 0, 7], DIST), State())
    p = z.softmax(1)
    d = DIST
    kl = torch.where(d > 0, d * (d.clamp_min(1e-30).log() - p.log()), torch.zeros_like(d)).sum(1).mean()
    assert loss.item() == pytest.approx(kl.item(), rel=1e-5)


def test_one_hot_targets_or_no_votes_give_ce():
    z = torch.randn(3, C, generator=torch.Generator().manual_seed(2))
    labels = [2, 5, 0]
    ce = F.cross_entropy(z, torch.tensor(labels)).item()
    majority = F.one_hot(torch.tensor(labels), C).float()  # --label-mode majority: d is one-hot
    assert LDL().loss(Logits(z), batch_of(labels, majority), State())[0].item() == pytest.approx(ce, rel=1e-6)
    assert LDL().loss(Logits(z), batch_of(labels), State())[0].item() == pytest.approx(ce, rel=1e-6)
    assert LDL.recipe is CE.recipe
