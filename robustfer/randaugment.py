"""Batched RandAugment + Cutout on the device, one random draw PER SAMPLE (methods.md, views table).

Two policies follow the two official strong views: NCCTFER's FixMatch `RandAugmentMC(2, 10)` (PIL,
`algorithm/randaug.py`: magnitude v = randint(1..9) per op, black geometric fill, nearest resampling,
Cutout grey 127 anchored at max(0, c - 8)) and DNFER's `RandomAugment(2, 10)` (cv2,
`algorithm/randaugument.py`: fixed level 10, grey 128 fill, bilinear warps, Cutout grey 128 centred).

Images are float N x C x H x W in [0, 1] (C = 1 or 3). The official numbers are for 224 px: translate
pixels, Cutout size and base-view padding are multiplied by size/224 here (`scaled`), rotate/shear are
scale-free. PIL and cv2 work in uint8: every op re-quantises to the 1/255 grid (rounding; geometric ops,
Equalize, Posterize and Solarize match PIL exactly, the enhance blends and AutoContrast within one grey
level; tests/test_randaugment.py compares them). Grey images (C = 1, or 3 equal channels) make Color the identity,
as it is in PIL and in DNFER's colour matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustfer import augment as A

REF_SIZE = 224  # the official pipelines augment 224 x 224 images

# The FixMatch pool's order (NCCTFER `fixmatch_augment_pool`); DNFER's pool holds the same 14 ops.
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate",
       "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
_LUMA = (0.299, 0.587, 0.114)  # PIL convert("L") weights (ITU-R 601)


def _fixmatch_tables() -> dict[str, tuple[float, ...]]:
    """Parameter of each op for v = 0..10 with FixMatch's exact float/int arithmetic (randaug.py
    `_float_parameter(v, max) = v*max/10`, `_int_parameter = int(v*max/10)`, plus the pool's bias)."""
    vs = range(11)
    return {
        "enhance": tuple(v * 0.9 / 10 + 0.05 for v in vs),                 # 0.05 + 0.09 v
        "posterize": tuple(float(int(v * 4 / 10) + 4) for v in vs),        # 4 + int(0.4 v) bits
        "rotate": tuple(float(int(v * 30 / 10)) for v in vs),              # 3 v degrees
        "shear": tuple(v * 0.3 / 10 for v in vs),                          # 0.03 v
        "solarize": tuple(float(256 - int(v * 256 / 10)) for v in vs),     # 256 - int(25.6 v)
        "translate": tuple(float(int(v * 0.3 / 10 * REF_SIZE)) for v in vs),  # int(0.03 v * 224) px at 224
    }


def _dnfer_tables() -> dict[str, tuple[float, ...]]:
    """DNFER's level->argument functions (randaugument.py, MAX_LEVEL 10, translate_const 10 px)."""
    vs = range(11)
    return {
        "enhance": tuple(v / 10 * 1.8 + 0.1 for v in vs),                  # 1.9 at level 10
        "posterize": tuple(float(int(v / 10 * 4)) for v in vs),            # 4 bits at level 10
        "rotate": tuple(v / 10 * 30 for v in vs),                          # 30 degrees
        "shear": tuple(v / 10 * 0.3 for v in vs),                          # 0.3
        "solarize": tuple(float(int(v / 10 * 256)) for v in vs),           # 256 = no-op at level 10
        "translate": tuple(v / 10 * 10.0 for v in vs),                     # 10 px at 224
    }


@dataclass(frozen=True)
class Policy:
    """One official strong-view recipe: magnitudes, fills, resampling and the Cutout convention."""

    name: str
    tables: dict
    random_magnitude: bool      # True: v ~ randint(1, 9) per op (np.random.randint(1, 10)); False: v = level
    level: int                  # the fixed level when not random (DNFER: 10)
    fill: float                 # geometric fill in [0, 1]
    mode: str                   # grid_sample resampling: PIL default NEAREST, cv2 INTER_LINEAR
    cutout: int                 # Cutout side at 224 px
    cutout_fill: float
    cutout_centred: bool        # DNFER: box centred on c, clipped on all sides; NCCTFER: top-left max(0, c - s/2)
    base_pad: str               # base-view padding: 'zeros' (torchvision RandomCrop) or 'reflect' (DNFER)
    n_ops: int = 2
    p_op: float = 0.5


NCCTFER = Policy("ncctfer", _fixmatch_tables(), True, 10, 0.0, "nearest", 16, 127 / 255, False, "zeros")
DNFER = Policy("dnfer", _dnfer_tables(), False, 10, 128 / 255, "bilinear", 16, 128 / 255, True, "reflect")
POLICIES = {"ncctfer": NCCTFER, "dnfer": DNFER}


def scaled(px: float, size: int, minimum: int = 1) -> int:
    """A pixel count given at 224 px, scaled to `size` px (rounded, at least `minimum`)."""
    return max(minimum, round(px * size / REF_SIZE))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid (k/255), clipped to [0, 1], as PIL/cv2 images are stored."""
    return x.mul(255).round_().clamp_(0, 255).div_(255)


# ---------------------------------------------------------------------------------------------------
# Colour ops: x float N x C x H x W in [0, 1], factors/params shape (N,)
# ---------------------------------------------------------------------------------------------------
def _luma(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W grey image (PIL 'L' weights; the image itself when C = 1)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + factor * (x - degenerate), clipped."""
    f = factor.to(x.dtype).view(-1, 1, 1, 1)
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the grey version (PIL's luma weights for both policies; DNFER's colour
    matrix lists them in BGR order, which only matters for colour images); the identity on grey images."""
    if x.shape[1] == 1:
        return x
    return _blend(_luma(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the image's mean grey level (PIL rounds that mean; not here)."""
    mean = _luma(x).mean((1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]]/13); the
    1-pixel border keeps its original values (PIL's 3x3 filter copies the border)."""
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / 13).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, k, groups=c)  # N x C x (H-2) x (W-2): interior only
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit values 0..255 of x as floats (exact integers)."""
    return x.mul(255).round_().clamp_(0, 255)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the top `bits` bits of each 8-bit value."""
    step = torch.exp2((8 - bits.to(x.dtype)).clamp(0, 8)).view(-1, 1, 1, 1)
    return (_levels(x) / step).floor_().mul_(step).div_(255)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: invert every 8-bit value >= threshold (256 = no-op)."""
    xi = _levels(x)
    return torch.where(xi >= threshold.to(x.dtype).view(-1, 1, 1, 1), 255 - xi, xi).div_(255)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0), per sample and channel: [min, max] -> [0, 255] by PIL's lut
    int((i - lo) * 255 / (hi - lo)); channels with max <= min stay unchanged."""
    xi = _levels(x)
    lo = xi.amin((2, 3), keepdim=True)
    hi = xi.amax((2, 3), keepdim=True)
    ok = hi > lo
    out = ((xi - lo) * 255 / torch.where(ok, hi - lo, torch.ones_like(hi))).floor_().clamp_(0, 255)
    return torch.where(ok, out, xi).div_(255)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize per sample and channel, batched with 256-bin histograms (scatter_add):
    step = (pixels - count of the last non-empty bin) // 255, lut[i] = (step//2 + #{< i}) // step."""
    n, c, h, w = x.shape
    xi = _levels(x).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, xi, torch.ones_like(xi))
    last = hist.gather(1, xi.amax(1, keepdim=True))          # count of the highest value present
    step = (h * w - last) // 255                              # (n*c, 1)
    below = hist.cumsum(1) - hist                             # pixels strictly below each value
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return lut.gather(1, xi).view(n, c, h, w).to(x.dtype) / 255


# ---------------------------------------------------------------------------------------------------
# Geometric ops: an inverse map per sample (output pixel -> input pixel) through affine_grid/grid_sample
# ---------------------------------------------------------------------------------------------------
def warp(x: torch.Tensor, m: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
    """Resample x at m @ (X, Y, 1), m: N x 2 x 3 in pixel units (X = column + 0.5, as PIL's transform);
    points outside the image take `fill`. theta = Nrm m Nrm^-1, Nrm: pixels -> [-1, 1] (align_corners=False)."""
    n, _, h, w = x.shape
    m = m.double()
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    # u' = (2/w)(a X + b Y + c) - 1 with X = w(u+1)/2, Y = h(v+1)/2
    theta = _affine(a, b * h / w, a + b * h / w + 2 * c / w - 1,
                    d * w / h, e, d * w / h + e + 2 * f / h - 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill if fill else x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return (out + fill).clamp_(0, 1) if fill else out.clamp_(0, 1)


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], -2)


def rotate(x: torch.Tensor, degrees: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
    """Rotate about the image centre by `degrees` (counter-clockwise for positive, as PIL rotate)."""
    h, w = x.shape[-2:]
    t = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2, h / 2
    # input = R (out - centre) + centre, R = [[cos, -sin], [sin, cos]] (PIL's inverse matrix)
    m = _affine(cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    return warp(x, m, fill, mode)


def shear_x(x: torch.Tensor, s: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
    """PIL transform AFFINE (1, s, 0, 0, 1, 0): input x = X + s*Y, sheared about the top-left corner."""
    one, zero = torch.ones_like(s, dtype=torch.float64), torch.zeros_like(s, dtype=torch.float64)
    return warp(x, _affine(one, s.double(), zero, zero, one, zero), fill, mode)


def shear_y(x: torch.Tensor, s: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
    """PIL transform AFFINE (1, 0, 0, s, 1, 0): input y = s*X + Y."""
    one, zero = torch.ones_like(s, dtype=torch.float64), torch.zeros_like(s, dtype=torch.float64)
    return warp(x, _affine(one, zero, zero, s.double(), one, zero), fill, mode)


def translate_x(x: torch.Tensor, px: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
    """PIL transform AFFINE (1, 0, px, 0, 1, 0): shift the content left by px pixels (right if negative)."""
    one, zero = torch.ones_like(px, dtype=torch.float64), torch.zeros_like(px, dtype=torch.float64)
    return warp(x, _affine(one, zero, px.double(), zero, one, zero), fill, mode)


def translate_y(x: torch.Tensor, px: torch.Tensor, fill: float, mode: str) -> torch.Tensor:
    """PIL transform AFFINE (1, 0, 0, 0, 1, px): shift the content up by px pixels."""
    one, zero = torch.ones_like(px, dtype=torch.float64), torch.zeros_like(px, dtype=torch.float64)
    return warp(x, _affine(one, zero, zero, zero, one, px.double()), fill, mode)


# ---------------------------------------------------------------------------------------------------
# RandAugment: draw per sample, then apply op by op on the subsets that drew it (no loop over samples)
# ---------------------------------------------------------------------------------------------------
def draw(n: int, g: torch.Generator, policy: Policy, device) -> dict[str, torch.Tensor]:
    """The random choices for n images, each (n_ops, n): op index into OPS, apply flag (p 0.5),
    magnitude v and sign (+1/-1) of the signed ops. Always the same number of draws from g."""
    k = policy.n_ops
    ops = torch.randint(len(OPS), (k, n), generator=g, device=device)  # with replacement (random.choices)
    apply = torch.rand(k, n, generator=g, device=device) < policy.p_op
    if policy.random_magnitude:
        v = torch.randint(1, 10, (k, n), generator=g, device=device)  # np.random.randint(1, 10): 1..9
    else:
        v = torch.full((k, n), policy.level, device=device, dtype=torch.long)
    sign = torch.where(torch.rand(k, n, generator=g, device=device) < 0.5, -1.0, 1.0)
    return {"op": ops, "apply": apply, "v": v, "sign": sign}


def _table(policy: Policy, key: str, v: torch.Tensor) -> torch.Tensor:
    return torch.tensor(policy.tables[key], device=v.device, dtype=torch.float64)[v]


def apply_op(x: torch.Tensor, name: str, v: torch.Tensor, sign: torch.Tensor, policy: Policy) -> torch.Tensor:
    """Op `name` on every image of x with per-image magnitude v and sign (both shape (N,))."""
    size = x.shape[-1]
    fill, mode = policy.fill, policy.mode
    if name == "Identity":
        return x
    if name == "AutoContrast":
        return autocontrast(x)
    if name == "Equalize":
        return equalize(x)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        f = _table(policy, "enhance", v)
        return {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness}[name](x, f)
    if name == "Posterize":
        return posterize(x, _table(policy, "posterize", v))
    if name == "Solarize":
        return solarize(x, _table(policy, "solarize", v))
    if name == "Rotate":
        return rotate(x, _table(policy, "rotate", v) * sign, fill, mode)
    if name in ("ShearX", "ShearY"):
        s = _table(policy, "shear", v) * sign
        return (shear_x if name == "ShearX" else shear_y)(x, s, fill, mode)
    if name in ("TranslateX", "TranslateY"):
        px = _table(policy, "translate", v) * sign * (size / REF_SIZE)  # 224-px offsets scaled to this size
        return (translate_x if name == "TranslateX" else translate_y)(x, px, fill, mode)
    raise ValueError(f"unknown RandAugment op {name!r}")


def rand_augment(x: torch.Tensor, g: torch.Generator, policy: Policy,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """policy.n_ops ops drawn per sample with replacement, each applied with p 0.5, in order; each op
    runs once per slot on the subset of samples that drew it (x float N x C x H x W in [0, 1])."""
    n = x.shape[0]
    p = params if params is not None else draw(n, g, policy, x.device)
    out = quantize(x.clone())
    for slot in range(p["op"].shape[0]):
        for k, name in enumerate(OPS):
            idx = ((p["op"][slot] == k) & p["apply"][slot]).nonzero().squeeze(1)
            if idx.numel() == 0 or name == "Identity":
                continue
            y = apply_op(out.index_select(0, idx), name, p["v"][slot, idx], p["sign"][slot, idx], policy)
            out.index_copy_(0, idx, quantize(y))
    return out


def cutout(x: torch.Tensor, g: torch.Generator, policy: Policy, size: int | None = None) -> torch.Tensor:
    """Always-on square Cutout of side policy.cutout * W/224 (16 px at 224, 3 px at 48), per sample.
    NCCTFER (CutoutAbs): centre c ~ U(0, W), box [int(max(0, c - s/2)), +s) clipped right/bottom
    (PIL's rectangle also paints its end row/column, 17 px at 224; the spec's 16 is kept).
    DNFER (cutout_func): c = int(U * W), box [c - s//2, c - s//2 + s) clipped on all sides."""
    n, _, h, w = x.shape
    s = size if size is not None else scaled(policy.cutout, w)
    u = torch.rand(2, n, generator=g, device=x.device, dtype=torch.float64)
    cy, cx = u[0] * h, u[1] * w
    if policy.cutout_centred:
        y0, x0 = cy.floor() - s // 2, cx.floor() - s // 2
    else:
        y0, x0 = (cy - s / 2).clamp_min(0).floor(), (cx - s / 2).clamp_min(0).floor()
    y1, x1 = y0 + s, x0 + s  # the box [y0, y1) x [x0, x1); the comparisons below clip it to the image
    ys = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w)
    box = ((ys >= y0.view(n, 1, 1)) & (ys < y1.view(n, 1, 1)) & (xs >= x0.view(n, 1, 1)) & (xs < x1.view(n, 1, 1)))
    return x.masked_fill(box.unsqueeze(1), policy.cutout_fill)


# ---------------------------------------------------------------------------------------------------
# The two methods' base views
# ---------------------------------------------------------------------------------------------------
def base_view(x: torch.Tensor, g: torch.Generator, policy: Policy) -> torch.Tensor:
    """Weak view. NCCTFER: RandomCrop(padding 4 * size/224, zero fill) + HFlip 0.5; DNFER: reflect-pad
    4 * size/224 + random crop + HFlip 0.5 (1 px at 48, 4 px at 224). Offsets are uniform over all
    2p+1 positions for both (DNFER's np.random.randint(0, 2p) never picks the last one, a 1-px bias
    at 224 that would become a 1-in-3 bias at 1 px padding; not reproduced)."""
    pad = scaled(4, x.shape[-1])
    x = A.random_crop(x, g, pad, fill="reflect" if policy.base_pad == "reflect" else 0.0)
    return A.hflip(x, g)


def strong_view(x: torch.Tensor, g: torch.Generator, policy: Policy) -> torch.Tensor:
    """Strong view: the base view (its own crop and flip) + RandAugment + Cutout (views table)."""
    return cutout(rand_augment(base_view(x, g, policy), g, policy), g, policy)


def weak_strong(x: torch.Tensor, g: torch.Generator, policy: Policy) -> tuple[torch.Tensor, torch.Tensor]:
    """(weak, strong) float views of the same images, drawn independently (weak first)."""
    return base_view(x, g, policy), strong_view(x, g, policy)


__all__ = ["DNFER", "NCCTFER", "OPS", "POLICIES", "Policy", "apply_op", "autocontrast", "base_view", "brightness",
           "color", "contrast", "cutout", "draw", "equalize", "posterize", "quantize", "rand_augment", "rotate",
           "scaled", "sharpness", "shear_x", "shear_y", "solarize", "strong_view", "translate_x", "translate_y",
           "warp", "weak_strong"]
