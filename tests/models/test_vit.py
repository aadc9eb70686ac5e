"""The ViT models (`vit_s`, `vit_lq`): shapes, the label-query head, the uniformity regulariser, and
every method through the one head mechanism (`models.make_head`) and the trainer's `extra_loss` hook."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.errors import RobustferError
from robustfer.methods import State, ViewSpec, create_method
from robustfer.models import create_backbone, create_model, extra_loss, make_head, model_defaults
from robustfer.models.vit import LabelQueryHead, uniformity_loss

X = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))


def test_vit_s_shapes_size_and_timm_parts():
    """48 px grey, patch 6 -> 64 patch tokens (no class token), dim 128; the timm parts an MAE objective uses."""
    bb = create_backbone("vit_s")
    assert model_defaults("vit_s") == model_defaults("vit_lq") == (48, 1)
    d = bb.feature_dim
    assert d == 128 and bb.head_input == "pooled"
    assert bb(X).shape == (2, d)
    tokens = bb.forward_tokens(X)
    assert tokens.shape == (2, 64, d)
    assert torch.allclose(bb(X), tokens.mean(1), atol=1e-6)  # the pooled feature = mean of the normed tokens
    v = bb.vit
    assert v.cls_token is None and v.pos_embed.shape == (1, 64, d) and len(v.blocks) == 6
    assert isinstance(v.norm, nn.LayerNorm) and v.patch_embed.proj.kernel_size == (6, 6)
    # forward_tokens = norm(blocks(patch_embed(x) + pos_embed)): the pieces MAE reassembles
    manual = v.norm(v.blocks(v.patch_embed(X) + v.pos_embed))
    assert torch.allclose(tokens, manual, atol=1e-5)
    m = create_model("vit_s", 8)
    assert isinstance(m.fc, nn.Linear) and m(X).shape == (2, 8)
    assert sum(p.numel() for p in m.parameters()) == 1_202_816 + 128 * 8 + 8  # encoder + Linear(128, 8)
    assert extra_loss(m) == 0  # a linear head carries no regulariser


def test_vit_lq_shapes_and_size():
    bb = create_backbone("vit_lq")
    assert bb.head_input == "tokens" and bb(X).shape == (2, 64, bb.feature_dim)
    m = create_model("vit_lq", 8)
    assert isinstance(m.fc, LabelQueryHead) and m.fc.embed.shape == (8, bb.feature_dim)
    assert m(X).shape == (2, 8)
    # encoder + embeddings (8x128) + one decoder layer (LN, MultiheadAttention 66048, LN, MLP 128-512-128)
    # + final LN + GroupFC (8x128 + 8)
    layer = 256 + 66_048 + 256 + 131_712
    assert sum(p.numel() for p in m.parameters()) == 1_202_816 + 8 * 128 + layer + 256 + 8 * 128 + 8
    # one encoder state_dict for both (an MAE-pretrained vit_s initialises vit_lq with --init)
    s, lq = create_backbone("vit_s").state_dict(), bb.state_dict()
    assert {k: v.shape for k, v in s.items()} == {k: v.shape for k, v in lq.items()}
    # the patch-4 option: 144 tokens
    assert create_backbone("vit_lq", patch_size=4).forward_tokens(X).shape == (2, 144, 128)


def test_cnn_heads_are_unchanged_linear_layers():
    bb = create_backbone("compact_s")
    head = make_head(bb, 8)
    assert type(head) is nn.Linear and head.in_features == 512 and head.out_features == 8
    assert extra_loss(create_model("compact_s", 8)) == 0


def test_label_query_head_one_logit_per_own_embedding():
    """No self-attention among the queries: moving label embedding j moves logit j and no other; and the
    GroupFC maps output embedding c to logit c only."""
    torch.manual_seed(0)
    head = LabelQueryHead(dim=16, num_classes=5, num_heads=2).eval()
    tokens = torch.randn(3, 10, 16)
    z = head(tokens)
    assert z.shape == (3, 5)
    for j in range(5):
        with torch.no_grad():
            saved = head.embed[j].clone()
            head.embed[j] += torch.randn(16)  # not a constant shift: LayerNorm would remove that
            z2 = head(tokens)
            head.embed[j] = saved
        changed = (z2 - z).abs().amax(0) > 1e-4
        assert changed.tolist() == [c == j for c in range(5)], j
    out = head.decode(tokens)
    assert torch.allclose(head.logits(out), torch.einsum("ncd,cd->nc", out, head.weight) + head.bias, atol=1e-5)
    out2 = out.clone()
    out2[:, 2] += 1.0
    diff = (head.logits(out2) - head.logits(out)).abs().amax(0)
    assert (diff > 0).tolist() == [False, False, True, False, False]
    with pytest.raises(RobustferError, match="takes tokens N x L x D"):
        head(torch.randn(3, 16))


def test_uniformity_loss_formula_and_order():
    """L_unif = log mean_{i != j} exp(-2 ||e_i - e_j||^2) on L2-normalised rows."""
    e = torch.tensor([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0]])  # normalised: (1,0), (0,1), (-1,0)
    expected = math.log((math.exp(-2 * 2) + math.exp(-2 * 4) + math.exp(-2 * 2)) / 3)
    assert uniformity_loss(e).item() == pytest.approx(expected, rel=1e-6)
    spread = torch.eye(8)                                            # orthonormal
    clustered = torch.ones(8, 8) + 0.05 * torch.eye(8)               # nearly one direction
    assert uniformity_loss(spread) < uniformity_loss(clustered)
    assert uniformity_loss(spread).item() == pytest.approx(-4.0, abs=1e-6)  # every pair at distance^2 2
    simplex = torch.eye(8) - 1 / 8                                   # the minimum: -2t(1 + 1/(C-1))
    assert uniformity_loss(simplex).item() == pytest.approx(-4.0 * (1 + 1 / 7), abs=1e-5)
    g = torch.ones(4, 3, requires_grad=True)                         # coinciding embeddings: finite gradient
    uniformity_loss(g).backward()
    assert torch.isfinite(g.grad).all()
    head = LabelQueryHead(dim=6, num_classes=4, num_heads=2, uniform_weight=0.3)
    assert head.extra_loss().item() == pytest.approx(0.3 * uniformity_loss(head.embed).item(), rel=1e-6)
    assert extra_loss(nn.Sequential(head)).item() == pytest.approx(head.extra_loss().item())


def _batch(method, n=8, seed=0):
    from robustfer.methods import Batch

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8, generator=g)
    spec = ViewSpec(size=48, channels=1, norm=method.recipe.get("norm", "imagenet"), recipe="official")
    views = method.make_views(x, g, spec)
    return Batch(views=views, labels=torch.arange(n) % 8, index=torch.arange(n), generator=g)


@pytest.mark.parametrize("name, options, epoch", [
    ("ce", {}, 0), ("ncctfer", {"warmup": 0}, 1), ("ncctfer", {}, 0), ("nla", {}, 0)])
def test_vit_lq_trains_one_step_with_each_method(name, options, epoch):
    """Each method builds its heads on vit_lq's tokens through make_head; one step's loss (+ the heads'
    regularisers) is finite and reaches the encoder and every label embedding that the loss uses."""
    torch.manual_seed(0)
    method = create_method(name, **options)
    model = method.build(create_backbone("vit_lq"), 8)
    heads = [m for m in model.modules() if isinstance(m, LabelQueryHead)]
    assert len(heads) == (2 if name == "ncctfer" else 1)
    batch = _batch(method)
    assert model(next(iter(batch.views.values()))).shape == (8, 8)
    loss, _ = method.loss(model, batch, State(epoch=epoch, epochs=2, num_train=8, num_classes=8))
    total = loss + extra_loss(model)
    assert total.dim() == 0 and torch.isfinite(total)
    assert (total - loss).item() == pytest.approx(sum(h.extra_loss().item() for h in heads), abs=1e-6)
    total.backward()
    assert model.backbone.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(h.embed.grad is not None and h.embed.grad.abs().sum() > 0 for h in heads)


def test_vit_lq_overfits_one_batch():
    """16 random images with fixed labels are memorised: gradients reach the encoder and the decoder."""
    torch.manual_seed(0)
    m = create_model("vit_lq", 8)
    x, y = torch.randn(16, 1, 48, 48), torch.arange(16) % 8
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for _ in range(15):  # measured: all memorised after 10 steps, CE 0.025 after 15
        loss = F.cross_entropy(m(x), y) + extra_loss(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert (m(x).argmax(1) == y).all() and F.cross_entropy(m(x), y).item() < 0.1


def test_trainer_adds_the_models_extra_loss(tmp_path, ferplus_root, monkeypatch):
    """A real FERPlus run with --model vit_lq: the trainer adds the head's extra_loss() to the method's
    loss at every step (here shifted by 100 to be seen in train_loss), and the checkpoint reloads."""
    from robustfer.train import TrainConfig, train
    from robustfer.train.checkpoint import load_trained

    calls = []
    real = LabelQueryHead.extra_loss

    def shifted(self):
        calls.append(1)
        return real(self) + 100.0

    monkeypatch.setattr(LabelQueryHead, "extra_loss", shifted)
    out = tmp_path / "r"
    train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(out), model="vit_lq", epochs=1, limit=64,
                      eval_limit=32, batch_size=32, threads=1, eval_split="valid"), quiet=True)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(calls) == 2  # 64 images / 32 per batch
    assert 100.0 - 4.6 < row["train_loss"] < 100.0 + 10.0 and 0 <= row["accuracy"] <= 1
    model, spec, classes, _ = load_trained(out / "last.pt")
    assert isinstance(model.fc, LabelQueryHead) and spec["size"] == 48
    assert model(torch.zeros(1, 1, 48, 48)).shape == (1, len(classes))
