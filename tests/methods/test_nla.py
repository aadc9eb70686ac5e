"""NLA (methods.md §3): the Gaussian weight, its ramp, gradients through w, the JSD, the views, a smoke run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.errors import RobustferError
from robustfer.methods import Batch, State, ViewSpec, create_method
from robustfer.methods.nla import (
    NLA, ambiguity_coordinates, correlation_ramp, jsd_averaged_logits, pixel_noise_uint8,
)
from robustfer.train.config import TrainConfig, resolve

E = 60


def w_of(method: NLA, probs: list[float], label: int, epoch: int, epochs: int = E) -> float:
    """The weight of one sample with probability vector `probs` and label `label` at `epoch`."""
    p = torch.tensor([probs], dtype=torch.float32)
    return method.weight(p, torch.tensor([label]), correlation_ramp(epoch, epochs)).item()


def probs_with(p_gt: float, p_nn: float, c: int = 8) -> tuple[list[float], int]:
    """(probabilities, label 0) with p[label] = p_gt and the largest other class = p_nn (the rest shared)."""
    rest = (1.0 - p_gt - p_nn) / (c - 2)
    assert 0 <= rest <= p_nn
    p = [rest] * c
    p[0], p[1] = p_gt, p_nn
    return p, 0


@pytest.fixture
def nla() -> NLA:
    return create_method("nla")


# ---- the spec's numbers ----

def test_covariances_are_the_specs_matrices(nla):
    assert nla.cov_correct == pytest.approx((0.80, -0.48), abs=1e-12)
    assert nla.cov_wrong == pytest.approx((0.851103, 0.805097), abs=1e-6)


def test_spec_test_values(nla):
    assert w_of(nla, [0.95, 0.03, 0.02], 0, epoch=0) == pytest.approx(0.153, abs=5e-4)   # correct, e = 0
    assert w_of(nla, [0.50, 0.45, 0.05], 0, epoch=59) == pytest.approx(0.248, abs=5e-4)  # correct, e = 59
    for e in (0, 7, 59):                                                                  # wrong: any epoch
        assert w_of(nla, [0.50, 0.45, 0.05], 1, epoch=e) == pytest.approx(0.447, abs=5e-4)
        assert w_of(nla, [0.85, 0.10, 0.05], 1, epoch=e) == pytest.approx(0.0068, abs=5e-5)


def test_ties_count_as_correct_by_exact_equality():
    p = torch.tensor([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]])
    y = torch.tensor([0, 1, 1])
    p_gt, p_nn, correct = ambiguity_coordinates(p, y)
    assert correct.tolist() == [True, True, False]
    assert p_nn.tolist() == pytest.approx([0.4, 0.4, 0.5])
    assert p_gt.tolist() == pytest.approx([0.4, 0.4, 0.3])


# ---- the defining behaviour ----

def test_ambiguous_mistakes_get_the_largest_weight_confident_ones_nearly_none(nla):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 8, generator=g) * 3
    labels = torch.randint(0, 8, (4000,), generator=g)
    probs = logits.softmax(1)
    w = nla.weight(probs, labels, eps=1.0)
    p_gt, p_nn, correct = ambiguity_coordinates(probs, labels)
    gap = (p_gt - p_nn).abs()
    top = w.argsort(descending=True)[:100]
    assert gap[top].max() < 0.15 and gap[top].mean() < gap.mean() / 4  # the heaviest are the ambiguous
    assert w.max() > 0.5 and not correct[w.argmax()]
    confident_wrong = ~correct & (p_nn > 0.9)
    assert confident_wrong.sum() > 20 and w[confident_wrong].max() < 0.01
    # Along a line of fixed p_GT + p_NN, the wrong-branch weight falls as the gap opens.
    for s in (0.5, 0.8, 0.95):
        ws = [w_of(nla, *probs_with(s / 2 - d / 2, s / 2 + d / 2), epoch=0) for d in (0.02, 0.2, 0.4)]
        assert ws[0] > ws[1] > ws[2]
    # Down-weighted, never dropped: every weight keeps the CE factor 0.5 (1 + w) within [0.5, 0.79].
    assert float(w.min()) >= 0 and float(w.max()) <= 0.58


def test_correct_predictions_get_moderate_weight(nla):
    for e in (0, 30, 59):
        for p_gt, p_nn in ((0.95, 0.03), (0.6, 0.3), (0.5, 0.45), (0.4, 0.35)):
            assert 0.14 < w_of(nla, *probs_with(p_gt, p_nn), epoch=e) < 0.26


def test_correlation_ramps_with_the_epoch(nla):
    eps = [correlation_ramp(e, E) for e in range(E)]
    assert eps[0] == 0.0 and eps[4] == pytest.approx(1 - math.exp(-1)) and eps[-1] > 0.9999
    assert all(b > a for a, b in zip(eps, eps[1:]))
    # Correct predictions gain weight as the anti-correlation ramps in (their mass spreads along
    # p_GT + p_NN = 1, where softmax outputs lie), ambiguous ones staying ahead of confident ones;
    # wrong predictions do not depend on the epoch.
    amb = [w_of(nla, [0.5, 0.45, 0.05], 0, epoch=e) for e in (0, 2, 5, 20, 59)]
    assert all(b > a for a, b in zip(amb, amb[1:]))
    conf = [w_of(nla, [0.95, 0.03, 0.02], 0, epoch=e) for e in (0, 59)]
    assert conf[0] < conf[1] < amb[-1] and amb[0] > conf[0]
    wrong = {w_of(nla, [0.5, 0.45, 0.05], 1, epoch=e) for e in (0, 5, 59)}
    assert len(wrong) == 1
    # The ramp follows the state's epoch and total epochs.
    assert nla.eps(State(epoch=3, epochs=30)) == pytest.approx(1 - math.exp(-1.5))
    assert create_method("nla", ramp=False).eps(State(epoch=0, epochs=30)) == 1.0


def test_gradients_flow_through_the_weight(nla):
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(16, 7, generator=g)
    y = torch.randint(0, 7, (16,), generator=g)
    eps = 0.6

    def grad(detach_w: bool) -> torch.Tensor:
        z = z0.clone().requires_grad_(True)
        ce = F.cross_entropy(z, y, reduction="none")
        w = nla.weight(z.softmax(1), y, eps)
        w = w.detach() if detach_w else w
        (0.5 * ce.mean() + 0.5 * (w * ce).mean()).backward()
        return z.grad

    full, detached = grad(False), grad(True)
    assert not torch.allclose(full, detached)
    # The difference is exactly the gradient of 0.5 mean(sg[CE] * w): the path through w.
    z = z0.clone().requires_grad_(True)
    ce = F.cross_entropy(z, y, reduction="none").detach()
    (0.5 * (nla.weight(z.softmax(1), y, eps) * ce).mean()).backward()
    assert torch.allclose(full - detached, z.grad, atol=1e-6)


def test_jsd_matches_a_hand_computation_with_sum_reductions():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    a, b = z1.numpy(), z2.numpy()
    total = 0.0
    for i in range(5):
        m = (a[i] + b[i]) / 2
        pm = np.exp(m) / np.exp(m).sum()
        for z in (a[i], b[i]):
            p = np.exp(z) / np.exp(z).sum()
            total += 0.5 * sum(pm[c] * math.log(pm[c] / p[c]) for c in range(8))
    assert jsd_averaged_logits(z1, z2).item() == pytest.approx(total, rel=1e-10)
    assert jsd_averaged_logits(z1, z2, "mean").item() == pytest.approx(total / 5, rel=1e-10)
    # Summed, not averaged: the term grows with the batch.
    assert jsd_averaged_logits(torch.cat([z1, z1]), torch.cat([z2, z2])).item() == pytest.approx(2 * total)
    # No stop-gradient is applied, yet the path through the target softmax(m) contributes exactly
    # nothing: with m the mean of the logits, 2 log softmax(m) - log p - log p' is constant over classes.
    x1, x2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    jsd_averaged_logits(x1, x2).backward()
    y1 = z1.clone().requires_grad_(True)
    pm = (0.5 * (y1 + z2)).softmax(1).detach()
    (0.5 * (pm * (pm.log() - y1.log_softmax(1))).sum()).backward()
    assert torch.allclose(x1.grad, y1.grad, atol=1e-12)
    assert x1.grad.abs().max() > 1e-3


class Recorder(nn.Module):
    """A linear model on the flattened input that records each forward's batch size."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, classes)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.fc(x.flatten(1))


def test_loss_is_the_specs_sum_with_separate_view_passes(nla):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 4, 4, generator=g)
    y = torch.randint(0, 8, (6,), generator=g)
    model = Recorder(16, 8)
    state = State(epoch=10, epochs=E)
    loss, stats = nla.loss(model, Batch(views={"orig": x, "flip": x.flip(-1)}, labels=y, index=torch.arange(6)), state)
    assert model.calls == [6, 6]  # two passes, never one concatenated batch
    with torch.no_grad():
        z, z2 = model.fc(x.flatten(1)), model.fc(x.flip(-1).flatten(1))
        ce = F.cross_entropy(z, y, reduction="none")
        w = nla.weight(z.softmax(1), y, correlation_ramp(10, E))
        expect = 0.5 * ce.mean() + 0.5 * (w * ce).mean() + 0.5 * jsd_averaged_logits(z, z2)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert stats["weight"].shape == (6,) and not stats["weight"].requires_grad
    assert torch.allclose(stats["weight"], w)


# ---- views ----

def test_flipped_view_is_the_exact_mirror_with_the_same_erased_patch(nla):
    x = torch.full((64, 1, 48, 48), 200, dtype=torch.uint8)
    x[:, :, :, :10] = 30  # an asymmetric image, so a mirror is visible
    views = nla.make_views(x, torch.Generator().manual_seed(0), ViewSpec(size=48, channels=1, norm="rafdb"))
    orig, flip = views["orig"], views["flip"]
    assert torch.equal(flip, orig.flip(-1))
    erased = (orig == 0).flatten(1).any(1)  # value 0 = the mean colour after normalisation
    assert 16 < int(erased.sum()) < 48  # RandomErasing p 0.5
    mirrored = orig[:, :, :, 0].mean((1, 2)) > 0.0  # the dark band went to the right
    assert 16 < int(mirrored.sum()) < 48  # HFlip p 0.5
    assert torch.equal((flip == 0), (orig == 0).flip(-1))


def test_official_view_is_noise_resize_normalise_flip_then_erasing_0_02_to_0_3(nla):
    """The official 'orig' view, rebuilt from the building blocks with the published parameters written out
    (RandomErasing scale (0.02, 0.3), ratio (0.3, 3.3), value 0): a changed erasing scale or order fails."""
    from robustfer import augment as A
    from robustfer.methods.nla import pixel_noise_uint8

    x = torch.randint(0, 256, (32, 1, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    spec = ViewSpec(size=40, channels=1, norm="rafdb")
    got = nla.make_views(x, torch.Generator().manual_seed(4), spec)["orig"]
    g = torch.Generator().manual_seed(4)
    f = pixel_noise_uint8(A.to_float(x, 1), g)
    f = A.hflip(A.normalize(A.resize(f, 40), "rafdb"), g)
    want = A.random_erasing(f, g, p=0.5, scale=(0.02, 0.3), ratio=(0.3, 3.3), value=0.0)
    assert torch.equal(got, want), "NLA's view is not noise -> resize -> normalise -> flip -> RandomErasing(0.5, (0.02, 0.3))"


def test_views_are_seeded_and_cpu_recipe_uses_the_shared_weak_view(nla):
    x = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    spec = ViewSpec(size=48, channels=1, norm="rafdb")
    a = nla.make_views(x, torch.Generator().manual_seed(9), spec)
    b = nla.make_views(x, torch.Generator().manual_seed(9), spec)
    assert torch.equal(a["orig"], b["orig"])
    cpu = ViewSpec(size=48, channels=1, norm="rafdb", recipe="cpu")
    weak = create_method("ce").make_views(x, torch.Generator().manual_seed(9), cpu)["weak"]
    v = nla.make_views(x, torch.Generator().manual_seed(9), cpu)
    assert torch.equal(v["orig"], weak) and torch.equal(v["flip"], weak.flip(-1))


def test_pixel_noise_is_clipped_and_truncated_to_uint8_levels():
    x = torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = (x * 255).round() / 255
    out = pixel_noise_uint8(x, torch.Generator().manual_seed(1))
    levels = out * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3) and out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(1)
    assert 70 < int(changed.sum()) < 130  # p 0.5
    d = (out - x)[changed] * 255
    assert abs(float(d.std()) - math.sqrt(30)) < 0.3  # std sqrt(30) grey levels
    assert float(d.mean()) == pytest.approx(-0.5, abs=0.1)  # truncation, as astype(uint8)


# ---- recipe, options, end to end ----

def test_official_recipe():
    cfg = resolve(TrainConfig(dataset="ferplus", root=".", out=".", method="nla", model="resnet18"), NLA.recipe)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.gamma) == ("adam", 1e-4, 1e-4, "exp", 0.9)
    assert (cfg.batch_size, cfg.epochs, cfg.norm, cfg.drop_last, cfg.recipe) == (32, 60, "rafdb", False, "official")
    with pytest.raises(RobustferError, match="jsd_reduction"):
        create_method("nla", jsd_reduction="median")


def test_train_smoke_with_noise_and_imbalance(ferplus_root, tmp_path):
    from robustfer.train import train

    out = tmp_path / "r"
    train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(out), method="nla", epochs=1, limit=256,
                      batch_size=32, noise="symmetric:0.2", imbalance=10, eval_limit=256), quiet=True)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["weight_mean_flipped"] is not None and row["weight_mean_clean"] is not None
    assert 0 < row["weight_mean_flipped"] < 0.6 and "mean_class_accuracy" in row and "per_class_recall" in row
    by_class = row["weight_mean_by_class"]  # per given label, every class of the long-tailed subset present
    assert set(by_class) == set(row["per_class_recall"]) and all(0 < w < 0.6 for w in by_class.values())
    # --limit 256 selects the pool; --imbalance 10 keeps a long-tailed subset of it (drawn on clean labels)
    from robustfer.data import load_dataset
    from robustfer.data.imbalance import long_tailed_counts

    pool = load_dataset("ferplus", str(ferplus_root), "train")
    listed = (out / "train_images.txt").read_text().splitlines()
    keep = long_tailed_counts(np.bincount(pool.labels[:256], minlength=pool.num_classes), 10)
    assert set(listed) <= set(pool.files[:256]) and len(listed) == keep.sum() < 256
    assert (out / "summary.json").exists()
