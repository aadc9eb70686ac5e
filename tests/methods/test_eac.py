import pytest
import torch
import torch.nn as nn

from robustfer.methods import Batch, State, ViewSpec, create_method
from robustfer.methods.eac import EACNet, consistency_loss


class MapNet(nn.Module):
    """A conv backbone with a feature map: kernel 1 (flip-equivariant) or an asymmetric 3 x 3 one."""

    def __init__(self, k: int):
        super().__init__()
        self.conv, self.feature_dim = nn.Conv2d(1, 4, k, padding=k // 2), 4
        if k == 3:
            with torch.no_grad():
                self.conv.weight[:, :, :, 0] += 1.0  # left column heavier: not mirror-symmetric

    def forward_map(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        return self.forward_map(x).mean((2, 3))


def test_loss_is_zero_for_a_model_whose_cam_is_flip_equivariant():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    net = EACNet(MapNet(1), 4)
    _, m = net.cam_logits(x)
    _, m_flip = net.cam_logits(x.flip(-1))
    assert consistency_loss(m, m_flip).item() < 1e-10
    net3 = EACNet(MapNet(3), 4)
    assert consistency_loss(net3.cam_logits(x)[1], net3.cam_logits(x.flip(-1))[1]).item() > 1e-3


def test_cams_use_the_detached_classifier_and_gradient_reaches_both_views():
    torch.manual_seed(0)
    net = EACNet(MapNet(3), 4)
    x = torch.randn(2, 1, 8, 8)
    z, m = net.cam_logits(x)
    fmap = net.backbone.forward_map(x)
    assert torch.allclose(m, torch.einsum("kc,nchw->nkhw", net.fc.weight, fmap), atol=1e-6)
    assert torch.allclose(z, net.fc(fmap.mean((2, 3))), atol=1e-6)
    m.sum().backward()
    assert net.fc.weight.grad is None and net.backbone.conv.weight.grad.abs().sum() > 0  # W detached
    method = create_method("eac")
    net.zero_grad()
    x1 = x.clone().requires_grad_(True)
    x2 = x.flip(-1).clone().requires_grad_(True)
    loss, stats = method.loss(net, Batch(views={"x": x1, "x_flip": x2}, labels=torch.tensor([0, 1]),
                                         index=torch.arange(2)), State())
    loss.backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0 and stats["argmax"].shape == (2,)


def test_views_noisy_mode_mirrors_the_raw_image_and_cpu_mode_mirrors_x():
    u8 = torch.randint(0, 256, (16, 1, 48, 48), dtype=torch.uint8)
    m = create_method("eac")
    v = m.make_views(u8, torch.Generator().manual_seed(0), ViewSpec(48, 1, "imagenet", "official"))
    # x' = erase(mirror(raw)): where neither view is erased and x got no noise, x' is x mirrored
    same = (v["x_flip"] == v["x"].flip(-1)).float().mean()
    assert 0.3 < same < 1.0  # noise on about half the images, erasing on some: not the cpu/clean identity
    c = m.make_views(u8, torch.Generator().manual_seed(0), ViewSpec(48, 1, "imagenet", "cpu"))
    assert torch.equal(c["x_flip"], c["x"].flip(-1))
    clean = create_method("eac", views="clean").make_views(u8, torch.Generator().manual_seed(0),
                                                            ViewSpec(48, 1, "imagenet", "official"))
    assert torch.equal(clean["x_flip"], clean["x"].flip(-1))


def test_loss_is_ce_on_x_plus_5_times_the_mean_squared_cam_difference():
    """methods.md §6 EAC: L = CE_mean(x) + 5 * MSE(M(x), flip(M(x'))), the MSE a mean over all N*C*H*W
    elements; M_k = sum_c W_kc F_c with W the fc weight; CE on x only."""
    torch.manual_seed(1)
    net = EACNet(MapNet(3), 4)
    x, x_flip = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    y = torch.tensor([0, 3, 1])
    loss, _ = create_method("eac").loss(net, Batch(views={"x": x, "x_flip": x_flip}, labels=y, index=torch.arange(3)),
                                        State())
    fx, ff = net.backbone.forward_map(x).double(), net.backbone.forward_map(x_flip).double()
    w, b = net.fc.weight.double(), net.fc.bias.double()
    m, m_flip = torch.einsum("kc,nchw->nkhw", w, fx), torch.einsum("kc,nchw->nkhw", w, ff)
    z = fx.mean((2, 3)) @ w.T + b
    ce = -z.log_softmax(1)[torch.arange(3), y].mean()
    mse = ((m - m_flip.flip(-1)) ** 2).sum() / m.numel()      # N*C*H*W = 3*4*8*8 elements
    assert loss.item() == pytest.approx((ce + 5 * mse).item(), rel=1e-5)
    assert mse.item() > 0.1 * ce.item()                       # the consistency term weighs in the check
