"""NCCTFER (methods.md §1): batch class thresholds with the 1e-6 tie tolerance, SUM CE on confident samples,
k-least-likely negative mask, the official stop-gradient of the negative loss, warm-up, the constant lr as
the trainer runs it, the views of NCCTFER's own policy, and noise detection on a separable toy problem."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from robustfer import randaugment as R
from robustfer.methods import Batch, State, create_method
from robustfer.methods.ncctfer import (class_thresholds, clamped_probs, confident_mask, negative_loss, negative_mask,
                                       positive_loss)
from robustfer.train import TrainConfig, train
from view_checks import SPEC, grey_levels, has_block, reference_views, textured


class Tiny(nn.Module):
    """A small backbone with BatchNorm (per-view batch statistics matter) and feature_dim."""

    def __init__(self, d=6):
        super().__init__()
        self.conv, self.bn, self.lin, self.feature_dim = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, d), d
        self.out_bn = nn.BatchNorm1d(d)   # standardised features: outputs differ across the batch

    def forward(self, x):
        return self.out_bn(self.lin(F.relu(self.bn(self.conv(x))).mean((2, 3))))


def _probs_logits(p):
    return torch.log(torch.tensor(p, dtype=torch.float32))


def test_threshold_moves_with_the_batch():
    # sample 0 (label 0, p_0 = 0.5) is confident among low-p_0 samples, not among high-p_0 ones
    low = _probs_logits([[0.5, 0.5], [0.2, 0.8], [0.2, 0.8]])
    high = _probs_logits([[0.5, 0.5], [0.9, 0.1], [0.9, 0.1]])
    y = torch.tensor([0, 1, 1])
    tau_low, tau_high = class_thresholds(clamped_probs(low)), class_thresholds(clamped_probs(high))
    assert tau_low[0].item() == pytest.approx((0.5 + 0.35 + 0.35) / 3)      # clamp(., 0.35, 0.65), all rows
    assert tau_high[0].item() == pytest.approx((0.5 + 0.65 + 0.65) / 3)
    assert confident_mask(clamped_probs(low), y)[0] and not confident_mask(clamped_probs(high), y)[0]


def test_ties_at_the_clamp_count_as_confident():
    # no sample has p_2 > 0.35: every p~_2 = 0.35 = tau_2, and all samples labelled 2 are selected
    z = _probs_logits([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.1, 0.3], [0.34, 0.33, 0.33]])
    conf = confident_mask(clamped_probs(z), torch.tensor([2, 2, 2, 2]))
    assert bool(conf.all())


def _near_tie(gap):
    """Label-0 probabilities of 4 samples, all labelled 0: sample 0 at 0.5, three at s, so tau_0 = 0.5 + gap."""
    s = 0.5 + 4 * gap / 3
    return torch.tensor([[0.5, 0.5]] + [[s, 1 - s]] * 3)


@pytest.mark.parametrize("gap,tie", [(5e-7, True), (9e-7, True), (1.2e-6, False), (3e-6, False)])
def test_tolerance_is_1e_6(gap, tie):
    # p~_y >= tau_y - 1e-6: below the threshold by less than 1e-6 is a tie (confident), by more it is not
    p, y = _near_tie(gap), torch.zeros(4, dtype=torch.long)
    realised = (p[:, 0].mean() - p[0, 0]).item()
    assert realised == pytest.approx(gap, abs=1e-7)                 # float32 keeps the intended gap
    assert confident_mask(p, y).tolist() == [tie, True, True, True]


class _Identity(nn.Module):
    """A 'backbone' whose feature is its input: with h_p = h_n = identity the views ARE the logits."""
    feature_dim = 2

    def forward(self, x):
        return x


@pytest.mark.parametrize("gap,tie", [(5e-7, True), (3e-6, False)])
def test_loss_selection_uses_the_tolerance(gap, tie):
    method = create_method("ncctfer", k=1)
    model = method.build(_Identity(), 2)
    with torch.no_grad():
        for head in (model.fc, model.neg):
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
    z = _near_tie(gap).log()
    p = clamped_probs(z)
    assert abs((p[:, 0].mean() - p[0, 0]).item() - gap) < 2e-7       # softmax(log p) keeps the gap
    batch = Batch(views={"weak": z, "strong": z.clone()}, labels=torch.zeros(4, dtype=torch.long), index=torch.arange(4))
    _, stats = method.loss_terms(model, batch, State(epoch=4, epochs=10))
    assert stats["flagged_noisy"].tolist() == [not tie, False, False, False]


def test_below_threshold_sample_is_excluded_from_the_sum():
    z = _probs_logits([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.7, 0.2, 0.1]]).requires_grad_()
    y = torch.tensor([0, 1, 0, 0])   # sample 2: p_0 = 0.2 < tau_0
    conf = confident_mask(clamped_probs(z), y)
    assert conf.tolist() == [True, True, False, True]
    loss = positive_loss(z, y, conf)
    ce = F.cross_entropy(z, y, reduction="none")
    assert loss.item() == pytest.approx(ce[[0, 1, 3]].sum().item())   # SUM, not mean
    loss.backward()
    assert z.grad[2].abs().max() == 0 and z.grad[0].abs().max() > 0


def test_empty_confident_set_falls_back_to_batch_mean():
    z = _probs_logits([[0.1, 0.9], [0.9, 0.1]])
    y = torch.tensor([0, 1])   # each label at p~ = 0.35 < tau = 0.5
    conf = confident_mask(clamped_probs(z), y)
    assert not conf.any()
    assert positive_loss(z, y, conf).item() == pytest.approx(F.cross_entropy(z, y).item())


def test_negative_mask_is_the_k_least_likely_with_ties():
    q = torch.tensor([[0.1, 0.2, 0.2, 0.5], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    assert negative_mask(q, 2).tolist() == [[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    g = torch.Generator().manual_seed(0)
    q = torch.rand(50, 8, generator=g).softmax(1)
    m = negative_mask(q, 4)
    assert torch.equal(m, torch.zeros_like(q).scatter_(1, q.argsort(1)[:, :4], 1.0))


def test_negative_loss_value():
    g = torch.Generator().manual_seed(1)
    nw, ns = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    qw, lqs = nw.softmax(1), ns.log_softmax(1)
    want = 0.0
    for i in range(5):
        order = qw[i].argsort()[:4]
        want -= sum(qw[i, c] * lqs[i, c] for c in order.tolist()).item() / 5
    assert negative_loss(nw, ns, 4).item() == pytest.approx(want, rel=1e-5)


def _setup(seed=0, n=12, c=8, **opts):
    torch.manual_seed(seed)
    method = create_method("ncctfer", **opts)
    model = method.build(Tiny(), c)
    with torch.no_grad():                     # peaked outputs, so the clamp does not tie everything
        model.fc.weight.mul_(40)
        model.neg.weight.mul_(5)
    xw = torch.randn(n, 1, 8, 8).requires_grad_()
    xs = torch.randn(n, 1, 8, 8).requires_grad_()
    with torch.no_grad():
        top = model(xw).argmax(1)
    y = top.roll(1)                           # the neighbour's top class: mostly below its threshold
    return method, model, Batch(views={"weak": xw, "strong": xs}, labels=y, index=torch.arange(n))


def test_loss_matches_hand_computation_after_warmup():
    method, model, batch = _setup()
    xw, xs, y = batch.views["weak"], batch.views["strong"], batch.labels
    loss, stats = method.loss(model, batch, State(epoch=4, epochs=10))
    zw, nw = model.fc(model.backbone(xw)), model.neg(model.backbone(xw))
    zs, ns = model.fc(model.backbone(xs)), model.neg(model.backbone(xs))

    def select(z):
        p = z.softmax(1).clamp(0.35, 0.65)
        tau = p.mean(0)
        return [p[i, y[i]] >= tau[y[i]] - 1e-6 for i in range(len(y))]

    def pos(z, conf):
        ce = F.cross_entropy(z, y, reduction="none")
        return sum(ce[i] for i in range(len(y)) if conf[i]) if any(conf) else ce.mean()

    cw, cs = select(zw), select(zs)
    u = [i for i in range(len(y)) if not cw[i]]
    assert 0 < len(u) < len(y)
    lneg = negative_loss(nw[u], ns[u], 4)
    want = (pos(zw, cw) + pos(zs, cs)) / 2 + lneg
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert stats["flagged_noisy"].tolist() == [not c for c in cw]


def _grads(out, params):
    return [None if g is None else g.abs().sum().item()
            for g in torch.autograd.grad(out, params, retain_graph=True, allow_unused=True)]


def test_negative_head_and_stop_gradient():
    method, model, batch = _setup()
    terms, _ = method.loss_terms(model, batch, State(epoch=4, epochs=10))
    xw, xs = batch.views["weak"], batch.views["strong"]
    neg = list(model.neg.parameters())
    assert all(g is None for g in _grads(terms["pos"], neg))           # h_n: no gradient from L_pos
    assert all(g is not None and g > 0 for g in _grads(terms["neg"], neg))
    gw, gs = _grads(terms["neg"], [xw, xs])
    assert gw > 0 and (gs is None or gs == 0)                          # L_neg reaches g only via the weak view
    assert all(g is not None and g > 0 for g in _grads(terms["neg"], list(model.backbone.parameters())))
    # the option: gradient also through log q^s
    method2, model2, batch2 = _setup(neg_grad="both")
    terms2, _ = method2.loss_terms(model2, batch2, State(epoch=4, epochs=10))
    gw2, gs2 = _grads(terms2["neg"], [batch2.views["weak"], batch2.views["strong"]])
    assert gw2 > 0 and gs2 > 0


def test_warmup_is_mean_ce_on_both_views():
    method, model, batch = _setup()
    loss, stats = method.loss(model, batch, State(epoch=3, epochs=10))
    y = batch.labels
    want = (F.cross_entropy(model(batch.views["weak"]), y) + F.cross_entropy(model(batch.views["strong"]), y)) / 2
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in model.neg.parameters())        # h_n keeps its initialisation
    assert not stats["flagged_noisy"].any()


def test_param_groups_and_recipe():
    method = create_method("ncctfer")
    model = method.build(Tiny(), 8)
    groups = method.param_groups(model, 1e-4)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-3), pytest.approx(1e-3)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    r = method.recipe
    assert (r["optimizer"], r["lr"], r["schedule"], r["batch_size"], r["epochs"], r["drop_last"]) == \
        ("adam", 1e-4, "constant", 128, 40, True)


def test_trainer_keeps_the_lr_constant(tmp_path, band_faces):
    """The RAF-DB/FERPlus recipe as the TRAINER runs it: every optimiser step of every epoch at encoder 1e-4,
    h_p and h_n 1e-3 (constant schedule; 256 toy images, batch 128, drop_last: 2 steps an epoch)."""
    seen = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        train(TrainConfig(dataset="folder", root=str(band_faces), out=str(tmp_path / "r"), method="ncctfer", epochs=3,
                          input_size=16, select_split="test", threads=1), quiet=True)
    finally:
        hook.remove()
    assert len(seen) == 6
    for step, got in enumerate(seen):
        assert got == pytest.approx([1e-4, 1e-3, 1e-3], rel=1e-9), f"optimiser step {step} (epoch {step // 2})"


def test_views_follow_the_ncctfer_policy():
    """methods.md views table, NCCTFER column: weak = RandomCrop(zero padding) + flip; strong = its own crop
    and flip + FixMatch RandAugmentMC (random v 1..9, black fill), not DNFER's RandomAugment + Cutout grey 127."""
    method = create_method("ncctfer")
    x = textured()
    views = method.make_views(x, torch.Generator().manual_seed(0), SPEC)
    assert set(views) == {"weak", "strong"} and views["weak"].shape == (200, 1, 48, 48)
    weak, strong = reference_views(x, 0, R.NCCTFER)
    assert torch.equal(views["weak"], weak), "weak view is not R.NCCTFER's base view"
    assert torch.equal(views["strong"], strong), "strong view is not base view + RandAugment + Cutout of R.NCCTFER"
    assert not torch.equal(views["strong"], reference_views(x, 0, R.DNFER)[1])
    # the policy's marks in the pixels: a grey-127 Cutout in every strong view, never DNFER's 128 ...
    levels = grey_levels(views["strong"])
    cut, foreign = has_block(levels, 127), has_block(levels, 128)
    assert cut.all(), f"{int((~cut).sum())} of 200 strong views have no grey-127 Cutout"
    assert not foreign.any(), f"{int(foreign.sum())} strong views hold a grey-128 block"
    # ... and zero fill at the shifted borders of the weak view (DNFER reflects)
    bright = torch.full((64, 1, 48, 48), 200, dtype=torch.uint8)
    weak_levels = grey_levels(method.make_views(bright, torch.Generator().manual_seed(1), SPEC)["weak"])
    assert sorted(weak_levels.unique().tolist()) == [0.0, 200.0]


def test_smoke_train_reports_noise_detection(smoke_noise_detection):
    row = smoke_noise_detection("ncctfer")
    # flagged AND flipped, counted two ways: precision x flagged share = recall x flipped share (all 256 seen)
    assert row["noise_precision"] * row["flagged_fraction"] == pytest.approx(row["noise_recall"] * row["noise_rate"])
