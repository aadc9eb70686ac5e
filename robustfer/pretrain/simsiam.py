"""SimSiam (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation Learning") for any backbone
with `feature_dim` and a pooled `forward` (the compact CNNs, ResNets): two augmented views of each image,
a projector MLP f and a predictor MLP h; L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2 with
D(p, z) = -cos(p, z), z = projector(backbone(view)), p = predictor(z), sg = stop-gradient (Eq. 1-4).

Why SimSiam rather than BYOL: the same predictor + stop-gradient idea without a momentum (EMA) target
network, so a step costs two forward/backward passes instead of BYOL's two plus two target forwards, the
weights are held once, there is no EMA schedule to set and nothing besides the weights and optimiser to
checkpoint; the paper reports it with SGD at batch 256 and on small data (CIFAR-10), the regime of a
28k-image set on a CPU. Its failure mode, collapse to a constant output, is watched as the paper does
(Fig. 2): `feature_std` = mean over dimensions of the per-dimension std of the L2-normalised projector
output, about 1/sqrt(dim) when the outputs spread over the sphere and 0 when they collapse.

Settings (the paper's CIFAR-10 variant scaled to 48 px grey faces): projector 2 layers (Linear-BN-ReLU,
Linear-BN without affine), width 512; predictor bottleneck 128 = width / 4 (Linear-BN-ReLU, Linear);
SGD momentum 0.9, lr 0.05 x batch / 256, weight decay 5e-4, cosine decay with the predictor's lr fixed
(the paper's `--fix-pred-lr`). Views per sample: random resized crop of 20-100% of the image (aspect 3/4
to 4/3), mirror with p 0.5, brightness and contrast jitter of 0.4 with p 0.8 (ColorJitter's; its
saturation/hue/grayscale are the identity on grey faces; no blur, as for CIFAR).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer import augment as A
from robustfer.errors import RobustferError
from robustfer.methods.base import ViewSpec
from robustfer.pretrain.base import Objective, brightness_contrast, finish, random_resized_crop


def feature_spread(z: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of the L2-normalised rows of z (SimSiam Fig. 2's collapse monitor)."""
    return F.normalize(z.detach().float(), dim=1).std(0).mean()


class SimSiam(Objective):
    name = "simsiam"
    summary = "two views, projector + predictor, negative cosine with stop-gradient (CNN backbones)"
    paper = "Chen & He, CVPR 2021"
    recipe = {"optimizer": "sgd", "base_lr": 0.05, "weight_decay": 5e-4, "batch_size": 256, "epochs": 100,
              "warmup_fraction": 0.0}
    options = ("proj_dim", "pred_dim")
    decay_everything = True

    def __init__(self, backbone: nn.Module, spec: ViewSpec, proj_dim: int = 512, pred_dim: int = 128):
        super().__init__(backbone, spec)
        feat = getattr(backbone, "feature_dim", None)
        if feat is None:
            raise RobustferError("objective simsiam needs a backbone with a pooled feature (feature_dim); "
                                 "use one of the registered --model names")
        if proj_dim < 2 or pred_dim < 1:
            raise RobustferError(f"--proj-dim {proj_dim} / --pred-dim {pred_dim}: need proj_dim >= 2 and pred_dim >= 1")
        self.projector = nn.Sequential(
            nn.Linear(feat, proj_dim, bias=False), nn.BatchNorm1d(proj_dim), nn.ReLU(inplace=True),
            nn.Linear(proj_dim, proj_dim, bias=False), nn.BatchNorm1d(proj_dim, affine=False))
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
            nn.Linear(pred_dim, proj_dim))
        self.proj_dim = proj_dim

    def view(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        f = A.to_float(x, self.spec.channels)
        f = brightness_contrast(A.hflip(random_resized_crop(f, g, scale=(0.2, 1.0)), g), g)
        return finish(f, self.spec).contiguous(memory_format=torch.channels_last)

    def param_groups(self, weight_decay: float) -> list[dict]:
        pred = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if id(p) not in pred]
        return [{"params": rest, "weight_decay": weight_decay},
                {"params": list(self.predictor.parameters()), "weight_decay": weight_decay, "fixed_lr": True}]

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """projector(pooled backbone feature); a token backbone (vit_lq) is mean-pooled as vit_s is."""
        f = self.backbone(v)
        return self.projector(f.mean(1) if f.dim() == 3 else f)

    def loss(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = self.embed(self.view(x, g)), self.embed(self.view(x, g))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = -0.5 * (F.cosine_similarity(p1.float(), z2.detach().float(), dim=-1).mean()
                       + F.cosine_similarity(p2.float(), z1.detach().float(), dim=-1).mean())
        return loss, {"feature_std": feature_spread(z1)}
