"""The two label-free objectives on a tiny real FERPlus batch: MAE reconstructs only masked patches and
learns; SimSiam learns without collapsing."""
import math

import numpy as np
import pytest
import torch

from robustfer.data import load_dataset
from robustfer.errors import RobustferError
from robustfer.methods.base import ViewSpec
from robustfer.models import create_backbone
from robustfer.models.compact import CompactCNN
from robustfer.pretrain import create_objective
from robustfer.pretrain.base import random_resized_crop
from robustfer.pretrain.mae import masked_mse, normalised_patches, patchify
from robustfer.pretrain.simsiam import feature_spread

SPEC = ViewSpec(size=48, channels=1, norm="imagenet")


@pytest.fixture(scope="module")
def faces(ferplus_root):
    """The first 32 FERPlus training faces, uint8 32 x 1 x 48 x 48 (images only)."""
    d = load_dataset("ferplus", ferplus_root, "train")
    return torch.from_numpy(np.array(d.images[:32]))


def _train(obj, x, steps, opt):
    g = torch.Generator().manual_seed(0)
    losses, stats = [], []
    for _ in range(steps):
        loss, s = obj.loss(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        stats.append({k: float(v) for k, v in s.items()})
    return losses, stats


def test_patchify_matches_the_patch_embedding_order():
    img = torch.arange(2 * 1 * 12 * 12, dtype=torch.float32).view(2, 1, 12, 12)
    p = patchify(img, (6, 6))
    assert p.shape == (2, 4, 36)
    assert torch.equal(p[0, 1], img[0, 0, :6, 6:].reshape(-1))  # second patch = top row, right half
    assert torch.equal(p[1, 2], img[1, 0, 6:, :6].reshape(-1))
    t = normalised_patches(img, (6, 6))
    assert torch.allclose(t.mean(-1), torch.zeros(2, 4), atol=1e-5)


def test_mae_loss_falls_on_a_tiny_batch(faces):
    torch.manual_seed(0)
    obj = create_objective("mae", create_backbone("vit_s"), SPEC)
    losses, _ = _train(obj, faces[:16], 20, torch.optim.AdamW(obj.parameters(), 1e-3, betas=(0.9, 0.95)))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses


def test_mae_encodes_visible_patches_and_scores_masked_ones_only(faces):
    torch.manual_seed(0)
    obj = create_objective("mae", create_backbone("vit_s"), SPEC, mask_ratio=0.75)
    x = faces[:4]
    img = obj.view(x, torch.Generator().manual_seed(1))
    ids, mask = obj.random_mask(4, torch.Generator().manual_seed(2), img.device)
    L = obj.num_patches
    keep = int(L * 0.25)
    assert mask.shape == (4, L) and torch.equal(mask.sum(1), torch.full((4,), float(L - keep)))
    seen = []
    hook = obj.backbone.vit.blocks.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    pred = obj.decode(obj.encode(img, ids, keep), ids)
    hook.remove()
    assert seen == [(4, keep, obj.backbone.vit.pos_embed.shape[-1])]  # the encoder sees the kept patches only
    target = normalised_patches(img, obj.patch)
    base = masked_mse(pred, target, mask)
    visible = mask.bool().logical_not().unsqueeze(-1)
    changed_visible = torch.where(visible, pred + 5 * torch.randn_like(pred), pred)
    assert torch.equal(masked_mse(changed_visible, target, mask), base)
    changed_masked = torch.where(~visible, pred + 0.5, pred)
    assert masked_mse(changed_masked, target, mask) != base
    # the kept patches are the ones the mask marks visible
    kept = torch.zeros(4, L).scatter_(1, ids[:, :keep], 1.0)
    assert torch.equal(kept, 1 - mask)


def test_mae_refuses_a_cnn_and_bad_ratios():
    with pytest.raises(RobustferError, match="needs a ViT backbone"):
        create_objective("mae", create_backbone("compact_s"), SPEC)
    with pytest.raises(RobustferError, match="mask-ratio"):
        create_objective("mae", create_backbone("vit_s"), SPEC, mask_ratio=1.0)


def test_simsiam_loss_falls_and_features_do_not_collapse(faces):
    torch.manual_seed(0)
    # a narrow compact CNN (the objective takes any pooled backbone; compact_s itself in test_runner.py)
    backbone = CompactCNN(1, (16, 32, "M", 64, "M", 128), stem_stride=2)
    obj = create_objective("simsiam", backbone, SPEC, proj_dim=128, pred_dim=32)
    groups = obj.param_groups(5e-4)
    assert groups[1].get("fixed_lr") and len(groups[1]["params"]) == len(list(obj.predictor.parameters()))
    losses, stats = _train(obj, faces, 25, torch.optim.SGD(groups, 0.05, momentum=0.9))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
    floor = 0.5 / math.sqrt(128)
    assert min(s["feature_std"] for s in stats[-5:]) > floor, stats


def test_collapse_monitor_reads_zero_for_a_constant_output():
    z = torch.randn(1, 64).expand(32, -1)
    assert feature_spread(z) < 1e-6
    assert abs(feature_spread(torch.randn(4096, 64)) - 1 / 8) < 0.01  # 1/sqrt(dim) when spread on the sphere


def test_random_resized_crop_is_per_sample_and_full_at_scale_one():
    x = torch.rand(8, 1, 48, 48)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)
    out = random_resized_crop(x.expand(8, -1, -1, -1)[:1].expand(8, -1, -1, -1), g)
    assert out.shape == x.shape and not torch.allclose(out[0], out[1])
