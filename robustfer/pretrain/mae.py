"""MAE (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision Learners"; methods.md §5) for
the ViT backbones: mask a random 75% of the patches of each image, encode the visible ones only, and
reconstruct the per-patch-normalised pixels of the masked ones with a light decoder; MSE on masked
patches only (the paper's `norm_pix_loss` target, its best setting).

Follows facebookresearch/mae `models_mae.py`: per-sample random masking by argsort of uniform noise;
the encoder = the backbone's timm VisionTransformer (`.vit.patch_embed`, `.pos_embed`, prefix tokens,
`.blocks`, `.norm`) on the kept patches; the decoder = Linear to the decoder width, a shared learnable
mask token at every masked place, fixed 2-D sin-cos positions (zero for the class token), timm `Block`s,
LayerNorm, Linear to p*p*C pixels per patch; target = (patch - mean) / sqrt(var + 1e-6) per patch.
Choices where the paper is silent for 48 px grey faces: decoder width 128 and depth 2 (the paper's
ablation: depth 1-2 suffices for fine-tuning), 4 heads; views = random resized crop of 50-100% of the
face (the paper's crop goes down to 20% of ImageNet scenes; faces are already tight crops) + mirror;
the target is computed on the normalised network input (per-patch normalisation removes the global
affine, up to the epsilon).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block

from robustfer import augment as A
from robustfer.errors import RobustferError
from robustfer.methods.base import ViewSpec
from robustfer.pretrain.base import Objective, finish, random_resized_crop

VIT_PARTS = ("patch_embed", "pos_embed", "blocks", "norm")


def patchify(img: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """N x C x H x W -> N x L x (ph*pw*C), patches in the row-major order of timm's PatchEmbed."""
    n, c, h, w = img.shape
    ph, pw = patch
    x = img.reshape(n, c, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // ph) * (w // pw), ph * pw * c)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only (mask: N x L, 1 = masked)."""
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def normalised_patches(img: torch.Tensor, patch: tuple[int, int], eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm_pix_loss target: each patch's pixels minus their mean, over sqrt(variance + eps)."""
    t = patchify(img.float(), patch)
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)  # unbiased, as models_mae.py
    return (t - mean) / (var + eps).sqrt()


class MAE(Objective):
    name = "mae"
    summary = "masked autoencoder: reconstruct the normalised pixels of 75% masked patches (ViT backbones)"
    paper = "He et al., CVPR 2022"
    # The paper's pre-training recipe: AdamW (0.9, 0.95), base lr 1.5e-4 per 256 images, weight decay 0.05,
    # warm-up (40 of 800 epochs: 5%) then half-cycle cosine. Its 800-1600 epochs are ImageNet's; a default for a 28k-image set.
    recipe = {"optimizer": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.05, "batch_size": 256, "epochs": 100,
              "warmup_fraction": 0.05}
    options = ("mask_ratio", "decoder_depth", "decoder_dim", "decoder_heads")

    def __init__(self, backbone: nn.Module, spec: ViewSpec, mask_ratio: float = 0.75, decoder_depth: int = 2,
                 decoder_dim: int = 128, decoder_heads: int = 4):
        super().__init__(backbone, spec)
        vit = getattr(backbone, "vit", None)
        if vit is None or not all(getattr(vit, a, None) is not None for a in VIT_PARTS):
            raise RobustferError(f"objective mae needs a ViT backbone with .vit.{{{','.join(VIT_PARTS)}}} "
                                 f"(e.g. --model vit_s); for a CNN use --objective simsiam")
        if not 0.0 < mask_ratio < 1.0:
            raise RobustferError(f"--mask-ratio {mask_ratio}: the masked share of patches must lie in (0, 1), e.g. 0.75")
        if decoder_depth < 1 or decoder_dim < 1 or decoder_dim % decoder_heads:
            raise RobustferError(f"--decoder-depth {decoder_depth} / --decoder-dim {decoder_dim}: need depth >= 1 "
                                 f"and a width divisible by the {decoder_heads} decoder heads")
        pe = vit.patch_embed
        self.patch = tuple(pe.patch_size)
        self.grid = tuple(pe.grid_size)
        if (spec.size, spec.size) != (self.grid[0] * self.patch[0], self.grid[1] * self.patch[1]):
            raise RobustferError(f"objective mae: the ViT takes {self.grid[0] * self.patch[0]} px images, the input "
                                 f"size is {spec.size}: leave --input-size at the model's default")
        self.mask_ratio = mask_ratio
        self.num_patches = self.grid[0] * self.grid[1]
        if int(self.num_patches * (1 - mask_ratio)) < 1:
            raise RobustferError(f"--mask-ratio {mask_ratio} masks all {self.num_patches} patches: lower it, e.g. 0.75")
        self.num_prefix = int(getattr(vit, "num_prefix_tokens", 0))
        dim = vit.pos_embed.shape[-1]
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed(list(self.grid), decoder_dim)
        pos = torch.cat([torch.zeros(self.num_prefix, decoder_dim), pos], 0)
        self.register_buffer("decoder_pos", pos.unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch[0] * self.patch[1] * spec.channels)
        # models_mae.py initialisation of the decoder: xavier-uniform Linear, zero bias, mask token N(0, 0.02)
        for m in [self.decoder_embed, self.decoder_pred, self.decoder_norm, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def view(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        f = A.to_float(x, self.spec.channels)
        return finish(A.hflip(random_resized_crop(f, g, scale=(0.5, 1.0)), g), self.spec)

    def random_mask(self, n: int, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_shuffle N x L, mask N x L with 1 = masked): the first L_keep of the shuffle are kept."""
        keep = int(self.num_patches * (1 - self.mask_ratio))
        ids = torch.rand(n, self.num_patches, generator=g, device=device).argsort(1)
        mask = torch.ones(n, self.num_patches, device=device)
        mask[:, :keep] = 0
        return ids, mask.gather(1, ids.argsort(1))

    def encode(self, img: torch.Tensor, ids: torch.Tensor, keep: int) -> torch.Tensor:
        """The encoder on the kept patches: N x (prefix + keep) x D (timm's _pos_embed, either layout)."""
        vit = self.backbone.vit
        x = vit.patch_embed(img)
        if x.dim() == 4:  # an NHWC patch embedding (dynamic_img_size)
            x = x.flatten(1, 2)
        pos = vit.pos_embed
        no_embed_class = getattr(vit, "no_embed_class", False)
        x = x + (pos if no_embed_class else pos[:, self.num_prefix:])
        n, _, d = x.shape
        x = x.gather(1, ids[:, :keep, None].expand(-1, -1, d))
        prefix = [t.expand(n, -1, -1) for t in (getattr(vit, "cls_token", None), getattr(vit, "reg_token", None))
                  if t is not None]
        if prefix:
            p = torch.cat(prefix, 1)
            if not no_embed_class:
                p = p + pos[:, :self.num_prefix]
            x = torch.cat([p, x], 1)
        for part in ("pos_drop", "norm_pre"):
            if getattr(vit, part, None) is not None:
                x = getattr(vit, part)(x)
        return vit.norm(vit.blocks(x))

    def decode(self, latent: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per-patch pixel predictions N x L x (p*p*C), in the image's patch order."""
        x = self.decoder_embed(latent)
        n, k = x.shape[0], self.num_prefix
        patches = torch.cat([x[:, k:], self.mask_token.to(x.dtype).expand(n, self.num_patches - (x.shape[1] - k), -1)], 1)
        restore = ids.argsort(1)
        patches = patches.gather(1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :k], patches], 1) + self.decoder_pos.to(x.dtype)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, k:])

    def loss(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.view(x, g)
        ids, mask = self.random_mask(img.shape[0], g, img.device)
        keep = int(self.num_patches * (1 - self.mask_ratio))
        pred = self.decode(self.encode(img, ids, keep), ids)
        loss = masked_mse(pred, normalised_patches(img, self.patch), mask)
        return loss, {}
