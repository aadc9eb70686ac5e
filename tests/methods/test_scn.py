import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.methods import Batch, State, create_method
from robustfer.methods.scn import SCNNet, rank_loss, relabel
from robustfer.train import TrainConfig, train


class Tiny(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.lin, self.feature_dim = nn.Linear(16, d), d

    def forward(self, x):
        return self.lin(x.flatten(1)[:, :16])


def test_rank_loss_is_zero_once_the_groups_are_separated_by_the_margin():
    alpha = torch.tensor([0.9, 0.8, 0.85, 0.75, 0.7, 0.72, 0.71, 0.3, 0.2, 0.1])  # top 7 vs 3
    loss, low = rank_loss(alpha, margin=0.07)
    assert loss.item() == 0.0 and low.tolist() == [False] * 7 + [True] * 3
    close = torch.tensor([0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.49, 0.48, 0.47], requires_grad=True)
    loss, low = rank_loss(close, margin=0.07)
    gap = close[:7].mean() - close[7:].mean()
    assert loss.item() == pytest.approx(0.07 - gap.item()) and loss.item() > 0
    loss.backward()  # pushes the high group up and the low group down
    assert (close.grad[:7] < 0).all() and (close.grad[7:] > 0).all()
    assert rank_loss(torch.tensor([0.4]), 0.07)[0].item() == 0.0  # floor(0.7) = 0: no high group


def test_relabels_only_above_its_threshold():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.35, 0.15], [0.2, 0.7, 0.1]])
    labels = torch.tensor([1, 1, 1])
    new, changed = relabel(probs, labels, margin=0.2)
    assert changed.tolist() == [True, False, False] and new.tolist() == [0, 1, 1]  # 0.3 > 0.2; 0.15 is not


def test_logits_are_scaled_by_alpha_and_relabels_persist_in_the_state():
    torch.manual_seed(0)
    m = create_method("scn", warmup=1)
    net = m.build(Tiny(), 3)
    assert isinstance(net, SCNNet)
    x = torch.randn(8, 1, 4, 4)
    a, z = net.weighted(x)
    assert torch.allclose(z, a.unsqueeze(1) * net.fc(net.backbone(x))) and torch.equal(net(x), z)
    with torch.no_grad():  # a model sure of class 0 for every image
        net.fc.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    batch = Batch(views={"weak": x}, labels=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), index=torch.arange(8))
    st = State(epoch=0, epochs=2, num_train=8)
    m.loss(net, batch, st)
    assert "scn_labels" not in st.tensors  # before its start epoch nothing is relabelled
    st.epoch = 1
    _, stats = m.loss(net, batch, st)
    assert st.tensors["scn_labels"].tolist() == [-1, 0, 0, -1, 0, 0, -1, 0]  # -1: the given label stands
    assert stats["relabelled"].tolist() == [0, 1, 1, 0, 1, 1, 0, 1]
    assert m.stored_labels(batch, st).tolist() == [0] * 8  # later batches train on the new labels
    assert set(stats) >= {"alpha", "flagged_noisy", "argmax"} and stats["flagged_noisy"].sum() == 8 - int(0.7 * 8)


def _cfg(root, out):
    return TrainConfig(dataset="ferplus", root=str(root), out=str(out), method="scn", epochs=3, limit=256,
                       batch_size=32, seed=4, noise="symmetric:0.3", eval_split="valid", eval_limit=64, threads=1,
                       recipe="official", method_options={"warmup": 1})


def test_relabel_state_is_saved_and_identical_after_resume(tmp_path, ferplus_root):
    train(_cfg(ferplus_root, tmp_path / "full"), quiet=True)
    train(_cfg(ferplus_root, tmp_path / "cut"), quiet=True, stop_after=2)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    train(TrainConfig(dataset="", root="", out=str(tmp_path / "cut")), resume=True, quiet=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    la, lb = a["method_state"]["scn_labels"], b["method_state"]["scn_labels"]
    assert torch.equal(la, lb) and (la >= 0).any() and not torch.equal(la, cut["method_state"]["scn_labels"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = [r for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert '"alpha_mean_flipped"' in rows[-1] and '"noise_precision"' in rows[-1] and '"relabelled_mean_flipped"' in rows[-1]


# p = softmax(bias) for every sample; gaps max_c p_c - p_y for labels 0..3: 0, 0.17, 0.25, 0.38
_P = torch.tensor([0.45, 0.28, 0.20, 0.07])


def test_default_margins_and_start_epoch_are_the_official_ones():
    """methods.md §6 SCN: L = CE(alpha z) + max(0, delta1 - gap), delta1 = 0.07 (weight 1); relabel from epoch 9
    (counted from 0) where max_c p_c - p_y > delta2 = 0.2."""
    m = create_method("scn")
    net = m.build(Tiny(), 4)
    with torch.no_grad():                         # every sample: alpha ~ 1 (equal alphas: gap 0), logits = log _P
        net.backbone.lin.weight.zero_()
        net.backbone.lin.bias.zero_()
        net.alpha.bias.fill_(30.0)
        net.fc.bias.copy_(_P.log())
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    batch = Batch(views={"weak": torch.randn(10, 1, 4, 4)}, labels=y, index=torch.arange(10))
    st = State(epoch=8, epochs=70, num_train=10)
    loss, stats = m.loss(net, batch, st)
    assert loss.item() == pytest.approx(F.nll_loss(_P.log().expand(10, 4), y).item() + 0.07, rel=1e-5)
    assert "scn_labels" not in st.tensors and "relabelled" not in stats      # epoch 8: not yet
    st.epoch = 9
    _, stats = m.loss(net, batch, st)
    assert stats["relabelled"].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]    # gap 0.17 stays, 0.25 and 0.38 move
    assert st.tensors["scn_labels"].tolist() == [-1, -1, 0, 0, -1, -1, 0, 0, -1, -1]
