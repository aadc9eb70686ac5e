"""Checks of a two-view method's weak/strong views against the methods.md views table (NCCTFER, DNFER):
the exact composition with the method's own policy, and the policy's marks visible in the pixels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robustfer import augment as A
from robustfer import randaugment as R
from robustfer.methods import ViewSpec

SPEC = ViewSpec(size=48, channels=1)


def reference_views(x: torch.Tensor, seed: int, policy: R.Policy, spec: ViewSpec = SPEC):
    """The views table composed from the primitives: weak = base view; strong = its own base view (crop,
    flip) + RandAugment + Cutout of `policy`; weak drawn first from one generator; then normalised."""
    g = torch.Generator().manual_seed(seed)
    f = A.resize(A.to_float(x, spec.channels), spec.size)
    weak = R.base_view(f, g, policy)
    strong = R.cutout(R.rand_augment(R.base_view(f, g, policy), g, policy), g, policy)
    return A.normalize(weak, spec.norm), A.normalize(strong, spec.norm)


def grey_levels(v: torch.Tensor, spec: ViewSpec = SPEC) -> torch.Tensor:
    """A normalised grey view back on the 0..255 grid (integers as floats)."""
    mean, std = (torch.tensor(m).mean().item() for m in A.NORMS[spec.norm])
    return (v * std + mean).mul(255).round()


def has_block(levels: torch.Tensor, value: int, side: int = 2) -> torch.Tensor:
    """Per sample: whether some side x side block is entirely `value` (Cutout at 48 px is 3 x 3, at least
    2 x 2 where clipped)."""
    hit = (levels == value).float()
    return F.max_pool2d(F.avg_pool2d(hit, side, stride=1), hit.shape[-1] - side + 1).flatten(1).amax(1) == 1


def textured(n: int = 200, seed: int = 0) -> torch.Tensor:
    """n different dark textured uint8 images (levels 0..60): no Cutout grey (127, 128) and no 2 x 2 block of
    one level that an op could turn into it."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 61, (n, 1, 48, 48), generator=g, dtype=torch.uint8)
