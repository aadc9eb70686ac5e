import pytest
import torch
import torch.nn.functional as F

from robustfer.errors import RobustferError
from robustfer.methods import Batch, State, ViewSpec, create_method
from robustfer.methods.rul import RULNet, add_up_loss, map_shape, mixing_weights
from robustfer.models import create_backbone


def test_mixing_weights_of_a_pair_sum_to_one_and_favour_the_less_uncertain():
    s = torch.tensor([4.0, 1.0, 2.0, 2.0])  # mean exp(logvar); uncertainty = 1 / s
    partner = torch.tensor([1, 0, 3, 2])
    w_i, w_j = mixing_weights(s, partner)
    assert torch.allclose(w_i + w_j, torch.ones(4))
    assert w_i[0] == pytest.approx(0.8) and w_i[1] == pytest.approx(0.2)  # sample 0: uncertainty 0.25 < 1
    assert w_i[2] == pytest.approx(0.5)


def test_add_up_loss_and_nothing_detached():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 64, requires_grad=True), torch.randn(6, 64, requires_grad=True)
    fc = torch.nn.Linear(64, 3)
    y, partner = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 2, 0, 4, 5, 3])
    loss, u = add_up_loss(fc, mu, logvar, y, partner)
    s = logvar.exp().mean(1)
    w = (s / (s + s[partner])).unsqueeze(1)
    out = fc(w * mu + (1 - w) * mu[partner])
    assert loss.item() == pytest.approx((0.5 * F.cross_entropy(out, y) + 0.5 * F.cross_entropy(out, y[partner])).item())
    assert torch.allclose(u, 1 / s)
    loss.backward()
    assert logvar.grad.abs().sum() > 0  # logvar learns through the mixing weights


def test_heads_fit_the_map_and_test_logits_come_from_mu():
    net = create_method("rul").build(create_backbone("compact_s"), 8, spec=ViewSpec(48, 1))
    assert isinstance(net, RULNet) and map_shape(net.backbone, ViewSpec(48, 1)) == (512, 3, 3)
    assert net.mu[3].in_features == 512 * 9 and net.logvar[3].out_features == 64
    net.eval()
    x = torch.rand(2, 1, 48, 48)
    assert torch.equal(net(x), net.fc(net.mu(net.backbone.forward_map(x))))
    groups = create_method("rul").param_groups(net, 2e-4)
    assert [g["lr"] for g in groups] == [2e-4, pytest.approx(2e-3)] and groups[1]["params"][0] is net.fc.weight
    with pytest.raises(RobustferError, match="convolutional backbone"):
        create_method("rul").build(create_backbone("vit_s"), 8, spec=ViewSpec(48, 1))


def test_loss_relabels_from_its_start_epoch_with_the_mean_head():
    torch.manual_seed(0)
    m = create_method("rul", warmup=1)
    net = m.build(create_backbone("compact_s"), 3, spec=ViewSpec(48, 1))
    with torch.no_grad():
        net.fc.bias.copy_(torch.tensor([20.0, 0.0, 0.0]))
    x = torch.rand(4, 1, 48, 48)
    batch = Batch(views={"weak": x}, labels=torch.tensor([0, 1, 2, 0]), index=torch.arange(4),
                  generator=torch.Generator().manual_seed(1))
    st = State(epoch=0, epochs=2, num_train=4)
    _, stats = m.loss(net, batch, st)
    assert "rul_labels" not in st.tensors and stats["uncertainty"].shape == (4,)
    st.epoch = 1
    loss, stats = m.loss(net, batch, st)
    assert st.tensors["rul_labels"].tolist() == [-1, 0, 0, -1] and torch.isfinite(loss)


def test_default_relabel_start_and_margin_are_scns():
    """methods.md §6 RUL: SCN's relabel rule on p = softmax(FC(mu)), from epoch 9 (counted from 0), delta2 = 0.2."""
    torch.manual_seed(0)
    m = create_method("rul")
    net = m.build(create_backbone("compact_s"), 4, spec=ViewSpec(48, 1))
    p = torch.tensor([0.45, 0.28, 0.20, 0.07])    # gaps max_c p_c - p_y for labels 0..3: 0, 0.17, 0.25, 0.38
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(p.log())
    batch = Batch(views={"weak": torch.rand(4, 1, 48, 48)}, labels=torch.tensor([0, 1, 2, 3]), index=torch.arange(4),
                  generator=torch.Generator().manual_seed(1))
    st = State(epoch=8, epochs=60, num_train=4)
    _, stats = m.loss(net, batch, st)
    assert "rul_labels" not in st.tensors and "relabelled" not in stats
    st.epoch = 9
    _, stats = m.loss(net, batch, st)
    assert st.tensors["rul_labels"].tolist() == [-1, -1, 0, 0]
