"""DNFER (methods.md §2): batch thresholds on clamp(p, 1e-8, 1-1e-8), MEAN CE on confident samples,
base-2 symmetric KL (both directions, no 1/2), alpha 0.5, warm-up, lr groups, the trainer's schedule, the
views of DNFER's own policy, and noise detection on a separable toy problem."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from robustfer import randaugment as R
from robustfer.methods import Batch, State, create_method
from robustfer.methods.dnfer import clamped_probs, confident_mask, supervised_loss, symmetric_kl2
from robustfer.train import TrainConfig, train
from robustfer.train.config import resolve
from view_checks import SPEC, grey_levels, has_block, reference_views, textured


class Tiny(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.conv, self.bn, self.lin, self.feature_dim = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, d), d
        self.out_bn = nn.BatchNorm1d(d)

    def forward(self, x):
        return self.out_bn(self.lin(F.relu(self.bn(self.conv(x))).mean((2, 3))))


def _logits(p):
    return torch.log(torch.tensor(p, dtype=torch.float32))


def test_consistency_is_the_sum_of_both_kl_directions_in_base_2():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(6, 8, generator=g).softmax(1), (3 * torch.randn(6, 8, generator=g)).softmax(1)
    pn, qn = p.double().numpy(), q.double().numpy()
    want = np.mean([sum(pn[i, c] * (np.log2(pn[i, c]) - np.log2(qn[i, c]))
                        + qn[i, c] * (np.log2(qn[i, c]) - np.log2(pn[i, c])) for c in range(8)) for i in range(6)])
    got = symmetric_kl2(p, q).item()
    assert got == pytest.approx(want, rel=1e-5)
    half_ln = 0.5 * (F.kl_div(q.log(), p, reduction="batchmean") + F.kl_div(p.log(), q, reduction="batchmean"))
    assert got == pytest.approx(2 * half_ln.item() / math.log(2), rel=1e-5)   # not halved, not natural log
    assert symmetric_kl2(p, p).item() == pytest.approx(0, abs=1e-6)
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                              # exact zeros: finite (tiny clamp)
    assert math.isfinite(symmetric_kl2(hard, hard.flip(1)).item())


def test_threshold_moves_with_the_batch_and_is_exact():
    y = torch.tensor([0, 1, 1])
    low = _logits([[0.5, 0.5], [0.2, 0.8], [0.2, 0.8]])
    high = _logits([[0.5, 0.5], [0.9, 0.1], [0.9, 0.1]])
    assert confident_mask(clamped_probs(low), y)[0] and not confident_mask(clamped_probs(high), y)[0]
    # the clamp is 1e-8, not NCCTFER's 0.35/0.65 (which would tie 0.7 and 0.9 at 0.65 and keep both)
    z = _logits([[0.7, 0.3], [0.9, 0.1]])
    assert confident_mask(clamped_probs(z), torch.tensor([0, 0])).tolist() == [False, True]


def test_supervised_loss_is_mean_over_confident_with_fallback():
    z = _logits([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.7, 0.2, 0.1]]).requires_grad_()
    y = torch.tensor([0, 1, 0, 0])
    conf = confident_mask(clamped_probs(z), y)
    assert conf.tolist() == [True, True, False, True]
    ce = F.cross_entropy(z, y, reduction="none")
    loss = supervised_loss(z, y, conf)
    assert loss.item() == pytest.approx(ce[[0, 1, 3]].mean().item())
    loss.backward()
    assert z.grad[2].abs().max() == 0
    z = _logits([[0.1, 0.9], [0.9, 0.1]])
    none = confident_mask(clamped_probs(z), torch.tensor([0, 1]))
    assert not none.any()
    assert supervised_loss(z, torch.tensor([0, 1]), none).item() == pytest.approx(F.cross_entropy(z, torch.tensor([0, 1])).item())


def _setup(seed=0, n=10, c=8, **opts):
    torch.manual_seed(seed)
    method = create_method("dnfer", **opts)
    model = method.build(Tiny(), c)
    with torch.no_grad():
        model.fc.weight.mul_(10)
    xw, xs = torch.randn(n, 1, 8, 8), torch.randn(n, 1, 8, 8)
    y = torch.randint(0, c, (n,))
    return method, model, Batch(views={"weak": xw, "strong": xs}, labels=y, index=torch.arange(n))


def test_loss_after_warmup_matches_hand_computation():
    method, model, batch = _setup()
    loss, stats = method.loss(model, batch, State(epoch=5, epochs=10))
    y = batch.labels
    zw, zs = model(batch.views["weak"]), model(batch.views["strong"])

    def sup(z):
        p = z.softmax(1).clamp(1e-8, 1 - 1e-8)
        tau = p.mean(0)
        keep = [i for i in range(len(y)) if p[i, y[i]] >= tau[y[i]]]
        ce = F.cross_entropy(z, y, reduction="none")
        return (ce[keep].mean() if keep else ce.mean()), keep

    (sw, keep_w), (ss, _) = sup(zw), sup(zs)
    assert 0 < len(keep_w) < len(y)
    pw, ps = zw.softmax(1), zs.softmax(1)
    con = ((pw * (pw.log2() - ps.log2())).sum(1) + (ps * (ps.log2() - pw.log2())).sum(1)).mean()
    want = 0.5 * (sw + ss) / 2 + 0.5 * con
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert stats["flagged_noisy"].tolist() == [i not in keep_w for i in range(len(y))]


def test_warmup_is_mean_ce_on_both_views():
    method, model, batch = _setup()
    loss, stats = method.loss(model, batch, State(epoch=4, epochs=10))
    y = batch.labels
    want = (F.cross_entropy(model(batch.views["weak"]), y) + F.cross_entropy(model(batch.views["strong"]), y)) / 2
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert not stats["flagged_noisy"].any()


def test_param_groups_and_recipe():
    method = create_method("dnfer")
    model = method.build(Tiny(), 8)
    groups = method.param_groups(model, 1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    cfg = resolve(TrainConfig(dataset="ferplus", root="", out="", method="dnfer", model="resnet18"), method.recipe)
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.gamma, cfg.batch_size, cfg.epochs, cfg.drop_last) == \
        ("adam", 1e-3, "exp", 0.95, 128, 40, True)


def test_trainer_runs_lr_0_times_0_95_to_the_epoch(tmp_path, band_faces):
    """The recipe's lr_e = lr_0 * 0.95^e as the TRAINER runs it: every optimiser step of epoch e (2 a epoch:
    256 toy images, batch 128, drop_last) at backbone 1e-3 * 0.95^e and classifier 1e-2 * 0.95^e; epoch 0 at
    lr_0 (no step before it), one step per epoch (not per batch); metrics.jsonl logs the epoch's lr."""
    seen = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        train(TrainConfig(dataset="folder", root=str(band_faces), out=str(tmp_path / "r"), method="dnfer", epochs=3,
                          input_size=16, select_split="test", threads=1), quiet=True)
    finally:
        hook.remove()
    want = [[1e-3 * 0.95 ** e, 1e-2 * 0.95 ** e] for e in range(3) for _ in range(2)]
    assert len(seen) == len(want)
    for step, (got, w) in enumerate(zip(seen, want)):
        assert got == pytest.approx(w, rel=1e-9), f"optimiser step {step} (epoch {step // 2})"
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3 * 0.95, 1e-3 * 0.95 ** 2], rel=1e-9)


def test_views_follow_the_dnfer_policy():
    """methods.md views table, DNFER column: weak = REFLECT-padded crop + flip; strong = its own crop and flip
    + RandomAugment(2, 10) (fixed level 10, grey 128 fill), not NCCTFER's RandAugmentMC + Cutout grey 128."""
    method = create_method("dnfer")
    x = textured()
    views = method.make_views(x, torch.Generator().manual_seed(0), SPEC)
    assert set(views) == {"weak", "strong"} and views["strong"].shape == (200, 1, 48, 48)
    weak, strong = reference_views(x, 0, R.DNFER)
    assert torch.equal(views["weak"], weak), "weak view is not R.DNFER's base view"
    assert torch.equal(views["strong"], strong), "strong view is not base view + RandAugment + Cutout of R.DNFER"
    assert not torch.equal(views["strong"], reference_views(x, 0, R.NCCTFER)[1])
    # the policy's marks in the pixels: a grey-128 Cutout in every strong view, never NCCTFER's 127 ...
    levels = grey_levels(views["strong"])
    cut, foreign = has_block(levels, 128), has_block(levels, 127)
    assert cut.all(), f"{int((~cut).sum())} of 200 strong views have no grey-128 Cutout"
    assert not foreign.any(), f"{int(foreign.sum())} strong views hold a grey-127 block"
    # ... and no zero fill in the weak view (reflect padding; NCCTFER pads with zeros)
    bright = torch.full((64, 1, 48, 48), 200, dtype=torch.uint8)
    weak_levels = grey_levels(method.make_views(bright, torch.Generator().manual_seed(1), SPEC)["weak"])
    assert weak_levels.unique().tolist() == [200.0]


def test_smoke_train_reports_noise_detection(smoke_noise_detection):
    row = smoke_noise_detection("dnfer")
    # flagged AND flipped, counted two ways: precision x flagged share = recall x flipped share (all 256 seen)
    assert row["noise_precision"] * row["flagged_fraction"] == pytest.approx(row["noise_recall"] * row["noise_rate"])
