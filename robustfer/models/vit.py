"""A small ViT for 48 px grey faces and the label-query decoder head of methods.md §5 (`vit_s`, `vit_lq`).

Encoder: timm's `VisionTransformer`, never pretrained, kept as `.vit` so that an MAE objective can use
`.vit.patch_embed`, `.vit.pos_embed`, `.vit.blocks` and `.vit.norm`. No class token: the tokens are the
L = (48/patch)^2 patch tokens (`pos_embed` is 1 x L x D), `.vit.norm` is the final LayerNorm applied to
them (timm's `fc_norm` is off), and the pooled feature is their mean (global_pool 'avg').

Head (`vit_lq`): C learnable label embeddings cross-attend to the patch tokens (ML-Decoder style: no
self-attention among the queries, so each label's output depends on its own embedding and the tokens
only), then one logit per output embedding through a per-class linear map ("GroupFC", C x D weights).
The head carries the uniform-embedding regulariser as `extra_loss()`, which the trainer adds to every
method's loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer

from robustfer.errors import RobustferError


def uniformity_loss(e: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity loss (ICML 2020) of the rows of `e` after L2 normalisation:

        L_unif = log( mean_{i != j} exp(-t ||e_i - e_j||^2) ),  e_i <- e_i / ||e_i||,  t = 2.

    Lower = more spread out on the sphere; for C unit vectors it is at least -2t (1 + 1/(C - 1)), reached
    by a regular simplex. Squared distances come from the Gram matrix (2 - 2 e_i.e_j), which keeps the
    gradient finite when two embeddings coincide. Computed in float32."""
    z = nn.functional.normalize(e.float(), dim=1)
    i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)  # i<j: the i != j mean is symmetric
    sq = (2.0 - 2.0 * (z @ z.T))[i, j]
    return torch.logsumexp(-t * sq, 0) - math.log(len(sq))


class LabelQueryLayer(nn.Module):
    """One pre-norm decoder layer: queries += CrossAttention(LN(queries), tokens); queries += MLP(LN(queries)).
    The tokens arrive already normalised (the encoder's final norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = q + self.cross_attn(self.norm1(q), tokens, tokens, need_weights=False)[0]
        return q + self.mlp(self.norm2(q))


class LabelQueryHead(nn.Module):
    """Label-query decoder (Query2Label / ML-Decoder style): tokens N x L x D -> logits N x C.

    logit_c = <LN(decoder(embed_c, tokens)), W_c> + b_c. `extra_loss()` = uniform_weight *
    uniformity_loss(embed) (formula in `uniformity_loss`)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, layers: int = 1, mlp_ratio: float = 4.0,
                 uniform_weight: float = 0.1):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(num_classes, dim))   # as nn.Embedding's init (Query2Label)
        self.layers = nn.ModuleList(LabelQueryLayer(dim, num_heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        bound = 1.0 / math.sqrt(dim)                                 # nn.Linear's init, per class
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.uniform_weight = float(uniform_weight)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The label embeddings after the decoder: N x C x D."""
        if tokens.dim() != 3:
            raise RobustferError(f"the label-query head takes tokens N x L x D, got shape {tuple(tokens.shape)}: "
                                 "build it with models.make_head on a backbone whose forward gives tokens")
        q = self.embed.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, tokens)
        return self.norm(q)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """GroupFC: one scalar per output embedding, logit_c = <out_c, W_c> + b_c (N x C x D -> N x C)."""
        return (out * self.weight).sum(-1) + self.bias

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits(self.decode(tokens))

    def extra_loss(self) -> torch.Tensor:
        return self.uniform_weight * uniformity_loss(self.embed)


class ViT(nn.Module):
    """timm ViT encoder for small grey faces (defaults: 48 px, patch 6 -> 64 tokens, dim 128, depth 6,
    4 heads of 32, MLP ratio 4; 1.19M parameters: about compact_s's multiply-adds, 0.6x its CPU
    training speed; dim 192 / patch 4 measured 0.3x). `head`: 'linear' (`vit_s`: forward gives the pooled
    feature, `models.make_head` puts nn.Linear on it) or 'label_query' (`vit_lq`: forward gives the
    tokens, `head_input` = 'tokens', and `make_head` builds a LabelQueryHead on them)."""

    def __init__(self, in_chans: int = 1, img_size: int = 48, patch_size: int = 6, embed_dim: int = 128,
                 depth: int = 6, num_heads: int = 4, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 head: str = "linear", decoder_layers: int = 1, uniform_weight: float = 0.1):
        super().__init__()
        if head not in ("linear", "label_query"):
            raise RobustferError(f"ViT head {head!r}: use linear or label_query")
        if img_size % patch_size:
            raise RobustferError(f"ViT patch size {patch_size} does not divide the input size {img_size}")
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                     global_pool="avg", class_token=False, fc_norm=False, embed_dim=embed_dim,
                                     depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                     drop_path_rate=drop_path_rate)
        self.feature_dim = embed_dim
        self.in_chans = in_chans
        self.img_size = img_size
        self.head_input = "tokens" if head == "label_query" else "pooled"
        self.head_options = {"num_heads": num_heads, "layers": decoder_layers, "mlp_ratio": mlp_ratio,
                             "uniform_weight": uniform_weight}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm: N x L x D."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise RobustferError(f"this ViT takes {self.img_size}x{self.img_size} input, got "
                                 f"{x.shape[-2]}x{x.shape[-1]} (the input size is fixed by its position embedding)")
        return self.vit.forward_features(x)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the normalised patch tokens: N x D."""
        return self.forward_tokens(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """What the heads take (`head_input`): the pooled feature, or the tokens for the label-query head."""
        return self.forward_tokens(x) if self.head_input == "tokens" else self.forward_pooled(x)

    def make_head(self, num_classes: int) -> nn.Module:
        """The token head for `head_input` 'tokens' (models.make_head calls it)."""
        return LabelQueryHead(self.feature_dim, num_classes, **self.head_options)
