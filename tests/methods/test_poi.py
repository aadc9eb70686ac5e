import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.data.classes import CANONICAL
from robustfer.errors import RobustferError
from robustfer.methods import Batch, State, create_method
from robustfer.methods.poi import AUS, PIN, REGIONS, AUBranch, ConfidenceHead, pin_loss, prior_matrix, trn_loss
from robustfer.models import Classifier, create_backbone
from robustfer.train import TrainConfig, train
from robustfer.train.checkpoint import load_trained


class Tiny(nn.Module):
    """A small pooled backbone that takes any input height (the region bands)."""

    def __init__(self, d=6):
        super().__init__()
        self.conv, self.lin, self.feature_dim = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, d), d

    def forward(self, x):
        return self.lin(F.relu(self.conv(x)).mean((2, 3)))


def _aus(*units):
    return torch.tensor([[1.0 if au in units else 0.0 for au in AUS]])


@pytest.mark.parametrize("dataset", ["ferplus", "rafdb", "affectnet", "fer2013"])
def test_prior_maps_prototype_aus_to_their_emotion_by_name(dataset):
    classes = CANONICAL[dataset]
    head = AUBranch(4, prior_matrix(classes))
    for units, name in [((6, 12), "happiness"), ((1, 2, 5, 26), "surprise"), ((), "neutral"),
                        ((1, 4, 15), "sadness"), ((4, 5, 7, 23), "anger"), ((9, 15, 16), "disgust"),
                        ((1, 2, 4, 5, 7, 20, 26), "fear")]:
        z = head.prior_logits(_aus(*units))
        assert classes[int(z.argmax())] == name, (units, dict(zip(classes, z[0].tolist())))
    if "contempt" in classes:
        assert classes[int(head.prior_logits(_aus(12, 14)).argmax())] == "contempt"


# methods.md §4: the EMFACS prototypes, written out (contempt one-sided AU12+AU14; neutral no AU active)
EMFACS = {"happiness": {6, 12}, "sadness": {1, 4, 15}, "surprise": {1, 2, 5, 26}, "fear": {1, 2, 4, 5, 7, 20, 26},
          "anger": {4, 5, 7, 23}, "disgust": {9, 15, 16}, "contempt": {12, 14}, "neutral": set()}


@pytest.mark.parametrize("dataset", ["ferplus", "rafdb"])
def test_prior_rows_are_the_emfacs_prototypes(dataset):
    classes = CANONICAL[dataset]
    prior = prior_matrix(classes)
    assert prior.shape == (len(classes), len(AUS)) and set(prior.unique().tolist()) <= {0.0, 1.0}
    got = {c: {au for au, on in zip(AUS, prior[i].tolist()) if on} for i, c in enumerate(classes)}
    assert got == {c: EMFACS[c] for c in classes}


def test_prior_rows_follow_the_class_names_not_the_positions():
    a, b = prior_matrix(CANONICAL["ferplus"]), prior_matrix(CANONICAL["rafdb"])
    for name in CANONICAL["rafdb"]:
        assert torch.equal(a[CANONICAL["ferplus"].index(name)], b[CANONICAL["rafdb"].index(name)])
    assert prior_matrix(("Happy", "Neutral"))[0].sum() == 2  # publisher spellings resolve by alias
    with pytest.raises(RobustferError, match="no action-unit prototype for class 'confused'"):
        prior_matrix(("neutral", "confused"))


def test_each_branch_sees_its_stated_region():
    rows = torch.arange(48.0).view(1, 1, 48, 1).expand(2, 1, 48, 48)  # pixel value = its row
    crops = PIN(Tiny(), prior_matrix(CANONICAL["ferplus"])).crops(rows)
    names = [r[0] for r in REGIONS]
    assert names == ["face", "upper", "middle", "lower"]
    expect = {"face": (0, 47), "upper": (0, 23), "middle": (14, 35), "lower": (26, 47)}  # 48 px, rows [top, bottom)
    for name, crop in zip(names, crops):
        assert crop.shape[-1] == 48
        assert (crop[0, 0, 0, 0].item(), crop[0, 0, -1, 0].item()) == expect[name], name


def test_branches_receive_the_mutual_learning_gradient():
    torch.manual_seed(0)
    pin = PIN(Tiny(), prior_matrix(CANONICAL["ferplus"]))
    for head in pin.heads:  # residuals start at zero; give the branches different outputs
        nn.init.normal_(head.residual.weight)
    x, y = torch.rand(8, 1, 48, 48), torch.randint(0, 8, (8,))
    with_dml, _ = pin_loss(pin(x), y, dml=1.0)
    ce_only, _ = pin_loss(pin(x), y, dml=0.0)
    (with_dml - ce_only).backward()  # the mutual-learning term alone
    assert (with_dml - ce_only).item() > 0
    for i, (enc, head) in enumerate(zip(pin.encoders, pin.heads)):
        assert head.au.weight.grad.abs().sum() > 0 and head.residual.weight.grad.abs().sum() > 0, i
        assert enc.conv.weight.grad.abs().sum() > 0, i
    same = torch.randn(1, 8, 8).expand(4, 8, 8)  # branches that agree get no mutual-learning pull
    assert pin_loss(same, y, 1.0)[0].item() == pytest.approx(pin_loss(same, y, 0.0)[0].item(), abs=1e-6)


def test_shared_pin_encoder_is_one_module():
    prior = prior_matrix(CANONICAL["ferplus"])
    assert len(PIN(Tiny(), prior, "shared").encoders) == 1 and len(PIN(Tiny(), prior).encoders) == 4
    with pytest.raises(RobustferError, match="pin_encoders"):
        PIN(Tiny(), prior, "mixed")


def _fit_confidence(ce_value: float, kl_value: float, lam: float, steps: int = 3000) -> float:
    """Minimise trn_loss's c-terms over a free c = sigmoid(u) with CE and KL held fixed."""
    u = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.05)
    for _ in range(steps):
        c = torch.sigmoid(u)
        loss = c * ce_value + (1 - c) * kl_value - lam * torch.log(c)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return torch.sigmoid(u).item()


def test_regulariser_keeps_confidence_off_zero_and_one_on_a_toy_problem():
    # the label costs 2 nats more than PIN's soft label: without the regulariser c collapses to 0
    assert _fit_confidence(2.5, 0.5, lam=0.0) < 0.01
    c = _fit_confidence(2.5, 0.5, lam=0.5)
    assert c == pytest.approx(0.5 / 2.0, abs=0.01) and 0.05 < c < 0.95  # the optimum lam / (CE - KL)


def test_trn_loss_is_the_stated_mix():
    z, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    s, c = torch.softmax(torch.randn(5, 4), 1), torch.rand(5) * 0.8 + 0.1
    ce = F.cross_entropy(z, y, reduction="none")
    kl = (s * (s.log() - z.log_softmax(1))).sum(1)
    assert trn_loss(z, y, s, c, 0.3).item() == pytest.approx((c * ce + (1 - c) * kl - 0.3 * c.log()).mean().item(), rel=1e-5)


def test_label_that_contradicts_a_confident_pin_ends_with_lower_confidence():
    """Two look-alike faces (one feature vector, so TRN gives both the same logits and cannot memorise
    each label) that PIN calls class 0 with probability 0.9: one labelled 0, one labelled 2. TRN starts
    where PIN is (as after warm-up); its logits and the uncertainty module train on L_TRN. The
    contradicted label ends with the lower c (about lam / (CE - KL)), the agreeing one near 1.
    (With z = 0 at the start, CE - KL = 0.43 < lam and both c go to 1: c falls only where TRN already
    disagrees with the label by more than lam nats.)"""
    torch.manual_seed(0)
    feats = torch.randn(1, 6).expand(2, 6)
    labels = torch.tensor([0, 2])
    soft = torch.full((2, 4), 0.1 / 3).index_fill_(1, torch.tensor([0]), 0.9)
    logit = soft[:1].log().clone().requires_grad_(True)
    head = ConfidenceHead(6, 4)
    opt = torch.optim.Adam([logit, *head.parameters()], lr=0.02)
    for _ in range(400):
        c = head(feats, labels, soft)
        loss = trn_loss(logit.expand(2, 4), labels, soft, c, lam=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    c = head(feats, labels, soft).detach()
    assert c[0] > 0.95 and c[1] < 0.5, c


def _tiny_run(tmp_path, ferplus_root, method, **kw):
    out = tmp_path / method
    train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(out), method=method, epochs=2, limit=192,
                      batch_size=64, noise="symmetric:0.3", threads=1, eval_limit=128, seed=2,
                      method_options={"warmup": 1} if method == "poi" else {}, **kw), quiet=True)
    return out


def test_poi_run_logs_confidence_and_recovery_and_ships_a_ce_sized_network(tmp_path, ferplus_root):
    poi, ce = _tiny_run(tmp_path, ferplus_root, "poi"), _tiny_run(tmp_path, ferplus_root, "ce")
    rows = [json.loads(line) for line in (poi / "metrics.jsonl").read_text().splitlines()]
    assert "confidence_mean_flipped" not in rows[0]  # warm-up: PIN alone teaches nothing yet
    last = rows[-1]
    for k in ("confidence_mean_flipped", "confidence_mean_clean", "pin_argmax_clean_recovery", "argmax_clean_recovery"):
        assert 0.0 <= last[k] <= 1.0, k
    assert set(last["confidence_mean_by_class"]) == set(CANONICAL["ferplus"])
    ce_last = json.loads((ce / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= ce_last["argmax_clean_recovery"] <= 1.0  # CE's own argmax on the same flipped labels
    full = torch.load(poi / "last.pt", weights_only=False)["model"]
    assert any(k.startswith("pin.") for k in full) and any(k.startswith("conf.") for k in full)
    m_poi, *_ = load_trained(poi / "last.pt")
    m_ce, *_ = load_trained(ce / "last.pt")
    assert type(m_poi) is type(m_ce) is Classifier
    assert {k: v.shape for k, v in m_poi.state_dict().items()} == {k: v.shape for k, v in m_ce.state_dict().items()}
    assert sum(p.numel() for p in m_poi.parameters()) == sum(p.numel() for p in m_ce.parameters())


def test_poi_loss_in_warm_up_and_joint_phases():
    method = create_method("poi", warmup=1)
    net = method.build(create_backbone("compact_s"), 8, CANONICAL["ferplus"])
    x = torch.rand(4, 1, 48, 48)
    assert torch.equal(net(x), net.trn(x)) and method.test_network(net) is net.trn
    batch = Batch(views={"weak": x}, labels=torch.tensor([0, 1, 2, 3]), index=torch.arange(4))
    _, warm = method.loss(net, batch, State(epoch=0, epochs=2))
    loss, joint = method.loss(net, batch, State(epoch=1, epochs=2))
    assert "confidence" not in warm and ((joint["confidence"] > 0) & (joint["confidence"] < 1)).all()
    assert warm["pin_argmax"].shape == (4,) and torch.isfinite(loss)
    with pytest.raises(RobustferError, match="class names"):
        method.build(create_backbone("compact_s"), 8)
