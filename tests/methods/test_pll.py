"""PLL / PRODEN (methods.md §5): targets uniform over the candidate set, zero outside, summing to 1; the
update moves them to the model's belief within the set (step: the pre-step forward, reforward: the
updated model, epoch: at the epoch's end); no votes = CE; exact resume on the real FERPlus data."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.data.candidates import candidate_sets
from robustfer.errors import RobustferError
from robustfer.methods import Batch, State, create_method
from robustfer.methods.ce import CE
from robustfer.methods.pll import PLL
from robustfer.train import TrainConfig, train
from robustfer.train.data import load_splits

C = 8


class Logits(nn.Module):
    """A 'network' whose logits for the i-th image of the batch are the parameter row i."""

    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z = nn.Parameter(z.clone().float())

    def forward(self, x):
        assert x.shape[0] == self.z.shape[0]
        return self.z


def vote_rows() -> torch.Tensor:
    return torch.tensor([[6, 2, 1, 1, 0, 0, 0, 0, 0, 0],   # S = {0, 1} at T = 2
                         [0, 0, 4, 4, 2, 0, 0, 0, 0, 0],   # S = {2, 3, 4}
                         [9, 0, 0, 0, 0, 0, 0, 0, 1, 0]],  # S = {0}: unknown never a candidate
                        dtype=torch.float32)


def batch_of(labels, votes=None, index=None) -> Batch:
    labels = torch.tensor(labels)
    n = len(labels)
    return Batch(views={"weak": torch.zeros(n, 1, 4, 4)}, labels=labels,
                 index=torch.arange(n) if index is None else torch.tensor(index), votes=votes)


def state(n: int = 3) -> State:
    return State(num_train=n, num_classes=C)


def test_targets_start_uniform_over_the_set_and_zero_outside():
    m, st, b = create_method("pll"), state(5), batch_of([0, 2, 0], vote_rows(), index=[4, 0, 2])
    _, stats = m.loss(Logits(torch.zeros(3, C)), b, st)
    t = st.tensors["pll_targets"]
    assert t.shape == (5, C)
    assert t[4].tolist() == [0.5, 0.5, 0, 0, 0, 0, 0, 0]
    assert t[0].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    assert t[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert t[1].sum() == 0 and t[3].sum() == 0  # not drawn yet
    assert stats["target_max"].tolist() == pytest.approx([0.5, 1 / 3, 1.0])
    assert stats["candidates"].tolist() == [2, 3, 1]


def test_loss_is_prodens_weighted_log_likelihood():
    z = torch.randn(3, C, generator=torch.Generator().manual_seed(0))
    m, st, b = create_method("pll"), state(), batch_of([0, 2, 0], vote_rows())
    loss, _ = m.loss(Logits(z), b, st)
    w = st.tensors["pll_targets"]
    assert loss.item() == pytest.approx(-(w * z.log_softmax(1)).sum(1).mean().item(), rel=1e-6)


def test_step_update_moves_targets_to_the_models_belief_within_the_set():
    z = torch.zeros(3, C)
    z[:, 1] = 2.0   # the model prefers class 1, in S_0 = {0, 1}
    z[:, 5] = 9.0   # and class 5 even more, outside every set: it must get nothing
    m, st, b = create_method("pll"), state(), batch_of([0, 2, 0], vote_rows())
    model = Logits(z)
    m.loss(model, b, st)
    before = st.tensors["pll_targets"].clone()
    m.after_step(model, b, st)
    t = st.tensors["pll_targets"]
    assert t[0, 1] > before[0, 1] and t[0, 1].item() == pytest.approx(torch.tensor([0.0, 2.0]).softmax(0)[1].item())
    assert t[1].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0])  # the model is indifferent in S_1
    assert t[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    cand = candidate_sets(vote_rows(), torch.tensor([0, 2, 0]), C, 2)
    assert torch.all(t[~cand] == 0) and torch.allclose(t.sum(1), torch.ones(3))
    p = z.softmax(1) * cand
    assert torch.allclose(t, p / p.sum(1, keepdim=True))  # PRODEN's formula


def test_step_uses_the_pre_step_forward_and_reforward_the_updated_model():
    z_before, z_after = torch.zeros(1, C), torch.zeros(1, C)
    z_after[0, 1] = 3.0
    cand = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    for update, z_expected in (("step", z_before), ("reforward", z_after)):
        m, st, b = create_method("pll", update=update), state(1), batch_of([0], vote_rows()[:1])
        model = Logits(z_before)
        m.loss(model, b, st)
        with torch.no_grad():
            model.z.copy_(z_after)  # what the optimiser step did
        m.after_step(model, b, st)
        p = z_expected.softmax(1) * cand
        assert torch.allclose(st.tensors["pll_targets"], p / p.sum(1, keepdim=True)), update


def test_reforward_leaves_batchnorm_statistics_as_training_left_them():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, C), nn.BatchNorm1d(C)).train()
    m, st = create_method("pll", update="reforward"), state(3)
    b = batch_of([0, 2, 0], vote_rows())
    b.views["weak"] = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    m.loss(net, b, st)
    stats = [t.clone() for t in net.buffers()]
    m.after_step(net, b, st)
    assert all(torch.equal(a, s) for a, s in zip(net.buffers(), stats))
    assert st.tensors["pll_targets"][0, :2].sum().item() == pytest.approx(1.0)


def test_epoch_update_waits_for_the_epochs_end():
    z = torch.zeros(3, C)
    z[:, 1] = 2.0
    m, st, b = create_method("pll", update="epoch"), state(4), batch_of([0, 2, 0], vote_rows())
    model = Logits(z)
    m.loss(model, b, st)
    m.after_step(model, b, st)
    start = st.tensors["pll_targets"].clone()
    assert start[0].tolist() == [0.5, 0.5, 0, 0, 0, 0, 0, 0]  # fixed during the epoch
    m.on_epoch_end(st)
    t = st.tensors["pll_targets"]
    assert t[0, 1].item() == pytest.approx(torch.tensor([0.0, 2.0]).softmax(0)[1].item())
    assert t[3].sum() == 0 and st.tensors["pll_next"].sum() == 0  # undrawn rows untouched, buffer emptied


def test_without_votes_pll_is_exactly_ce():
    z = torch.randn(4, C, generator=torch.Generator().manual_seed(2))
    labels = [3, 0, 7, 3]
    m, st, b = create_method("pll"), state(4), batch_of(labels)
    loss, stats = m.loss(Logits(z), b, st)
    ce, _ = CE().loss(Logits(z), b, State())
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(z, torch.tensor(labels)).item(), rel=1e-6)
    m.after_step(Logits(z), b, st)
    assert torch.equal(st.tensors["pll_targets"], F.one_hot(torch.tensor(labels), C).float())  # stays one-hot
    assert stats["target_max"].tolist() == [1, 1, 1, 1]


def test_min_votes_option_and_bad_options():
    b = batch_of([0, 2, 0], vote_rows())
    for t, sizes in ((1, [4, 3, 1]), (2, [2, 3, 1]), (3, [1, 2, 1])):
        _, stats = create_method("pll", min_votes=t).loss(Logits(torch.zeros(3, C)), b, state())
        assert stats["candidates"].tolist() == sizes, t
    with pytest.raises(RobustferError, match="min_votes=0"):
        create_method("pll", min_votes=0)
    with pytest.raises(RobustferError, match="update='sometimes'"):
        create_method("pll", update="sometimes")
    assert PLL.recipe is CE.recipe  # the CE control of PLL is CE itself


def _cfg(root, out, **kw):
    return TrainConfig(dataset="ferplus", root=str(root), out=str(out), method="pll", epochs=2, limit=256,
                       batch_size=32, seed=5, eval_split="valid", eval_limit=64, threads=1, **kw)


def test_targets_are_saved_and_identical_after_resume(tmp_path, ferplus_root):
    train(_cfg(ferplus_root, tmp_path / "full"), quiet=True)
    train(_cfg(ferplus_root, tmp_path / "cut"), quiet=True, stop_after=1)
    cut1 = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["method_state"]["pll_targets"]
    train(TrainConfig(dataset="", root="", out=str(tmp_path / "cut")), resume=True, quiet=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["method_state"]["pll_targets"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["method_state"]["pll_targets"]
    assert torch.equal(a, b) and not torch.equal(a, cut1)
    d, _, _ = load_splits(_cfg(ferplus_root, tmp_path / "x"))  # the same 256 training images
    cand = candidate_sets(d.votes, d.labels, C, 2)
    assert a.shape == (256, C) and torch.equal(a > 0, torch.from_numpy(cand))  # the votes reached the batches
    assert torch.allclose(a.sum(1), torch.ones(256))
    uniform = 1 / torch.from_numpy(cand.sum(1)).float()
    ambiguous = torch.from_numpy(cand.sum(1) > 1)
    assert ambiguous.any() and torch.all(a.amax(1)[ambiguous] > uniform[ambiguous])  # disambiguating
    row = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "target_max_mean_by_class" in row and "candidates_mean_by_class" in row
