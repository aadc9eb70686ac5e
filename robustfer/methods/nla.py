"""NLA — Navigating Label Ambiguity (AAAI 2025, arXiv 2502.09993; methods.md §3).

Each sample's CE is re-weighted by a 2-D Gaussian density over v = (p_GT, p_NN): p_GT = p[y], p_NN =
the largest OTHER probability. Correct predictions (p_GT is the maximum, exact float equality, so ties
count as correct) use mu (0.5, 0.5) and an anti-correlated covariance whose correlation ramps in with
eps(e) = 1 - exp(-15 e / E); wrong ones use mu (0.30, 0.15) and a fixed, strongly correlated
covariance, so ambiguous mistakes (p_GT close to p_NN) keep weight and confident mistakes get almost
none. A Jensen-Shannon term on averaged logits ties the image to its mirror:

    L = 0.5 mean(CE) + 0.5 mean(w * CE) + 0.5 JSD(z, z'),  gradients through w; none stopped anywhere.

Choices where methods.md §3 is silent (each an option with the official behaviour as its default):
- Covariances are built as the official code does, from a major-axis std s and a ratio k:
  Sigma = [[s^2 + (s/k)^2, ±(s^2 - (s/k)^2)], ...]; s = 0.8, k = 2 (correct, sign -, times eps) gives
  the spec's [[0.80, -0.48 eps]]; s = 0.91, k = 6 (wrong, sign +) gives [[0.851103, 0.805097]].
- The weight, CE and JSD are computed in float32 from the logits even under bf16 autocast (the exact
  equality test and the Gaussian are precision sensitive).
- Pixel noise: added to the image at its stored resolution AFTER conversion to the model's channel
  count (a grey image feeding a 3-channel model gets independent noise per channel, as the official
  cv2 loader of 3-channel images does), then clipped to [0, 255] and truncated to integer levels, as
  numpy's astype(uint8) does.
- Hard labels only: FERPlus soft label modes do not apply (the paper's loss is CE on y).
- `--recipe cpu` (compact CNN, shared quick protocol): x is the shared weak view of every method
  (random crop + flip) instead of noise/erasing, so tables compare losses, not augmentations; x' is
  still x mirrored. The JSD keeps its SUM reduction there too (option `jsd_reduction=mean` divides by
  N). Under SGD that sum (0.5 N times a per-sample term, 64 at batch 128) can dominate: a FERPlus probe
  (3000 images, 20% noise, 4 epochs, --recipe cpu) collapsed to a constant prediction with `sum` and
  trained with `mean`. Adam, the official optimiser, is insensitive to the overall scale.
- E in eps(e) is the run's configured number of epochs (State.epochs), e counts from 0, as officially.
- Options (--method-opt): lam_ce, lam_weighted, lam_jsd (0.5 each), slope (-15), ramp (true),
  mu_correct, std_correct, ratio_correct, mu_wrong, std_wrong, ratio_wrong, jsd_reduction (sum).
- Stats: per-sample `weight` (w, detached) so the trainer reports its mean on flipped vs clean labels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustfer import augment as A
from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State, ViewSpec


def covariance(std_major: float, ratio: float, sign: float) -> tuple[float, float]:
    """(diagonal, off-diagonal) of a 45-degree rotated 2-D covariance with axis stds s and s/ratio (official NAW)."""
    minor = std_major / ratio
    return std_major ** 2 + minor ** 2, sign * (std_major ** 2 - minor ** 2)


def correlation_ramp(epoch: int, epochs: int, slope: float = -15.0) -> float:
    """eps(e) = 1 - exp(slope * e / E): 0 at the first epoch, close to 1 after a sixth of training (slope -15)."""
    return 1.0 - math.exp(slope * epoch / max(epochs, 1))


def gaussian_2d(v: torch.Tensor, mu: tuple[float, float], diag: float, off: float) -> torch.Tensor:
    """Density of N(mu, [[diag, off], [off, diag]]) at the rows of v (N x 2), in closed form."""
    det = diag * diag - off * off
    dx, dy = v[:, 0] - mu[0], v[:, 1] - mu[1]
    quad = (diag * dx * dx - 2.0 * off * dx * dy + diag * dy * dy) / det
    return torch.exp(-0.5 * quad) / (2.0 * math.pi * math.sqrt(det))


def ambiguity_coordinates(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p_GT, p_NN, correct): correct = (top-1 probability == p_GT) by exact float equality, so ties count as correct."""
    p_gt = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    top2 = probs.topk(2, dim=1).values
    correct = top2[:, 0] == p_gt
    p_nn = torch.where(correct, top2[:, 1], top2[:, 0])
    return p_gt, p_nn, correct


def jsd_averaged_logits(z1: torch.Tensor, z2: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """0.5 [KL(softmax(m) || softmax(z1)) + KL(softmax(m) || softmax(z2))], m = (z1 + z2) / 2 (LOGITS averaged).

    'sum' (official) sums each KL over batch and classes; 'mean' divides by the batch size. No
    stop-gradient, as officially; the path through the target softmax(m) then contributes exactly zero
    (2 log softmax(m) - log p1 - log p2 is constant over classes), so only log p1 and log p2 pull."""
    m = 0.5 * (z1 + z2)
    log_pm = F.log_softmax(m, dim=1)
    pm = log_pm.exp()
    kl1 = (pm * (log_pm - F.log_softmax(z1, dim=1))).sum()
    kl2 = (pm * (log_pm - F.log_softmax(z2, dim=1))).sum()
    jsd = 0.5 * (kl1 + kl2)
    if reduction == "sum":
        return jsd
    if reduction == "mean":
        return jsd / z1.shape[0]
    raise ValueError(f"jsd_reduction {reduction!r}: use sum (official) or mean")


def pixel_noise_uint8(x: torch.Tensor, g: torch.Generator, std: float = math.sqrt(30), p: float = 0.5) -> torch.Tensor:
    """With probability p per sample add N(0, std) in 0-255 units, clip to [0, 255] and truncate to integer
    levels (official add_g: np.clip(...).astype(uint8)). Input/output float in [0, 1] on the 1/255 grid."""
    levels = (x * 255.0).round()
    apply = (A.rand(x.shape[0], g, x.device) < p).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * std
    noisy = (levels + noise).clamp_(0.0, 255.0).floor_()
    return torch.where(apply, noisy, levels) / 255.0


class NLA(Method):
    name = "nla"
    summary = "CE re-weighted by a 2-D Gaussian over (p_GT, p_NN) + JSD to the mirrored image"
    paper = "Navigating Label Ambiguity, AAAI 2025 (arXiv 2502.09993)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    # SUM-reduced JSD: plain SGD collapsed to one class in a probe; the official Adam recipe is scale-free.
    cpu_recipe_ok = False
    recipe = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "schedule": "exp", "gamma": 0.9,
              "batch_size": 32, "epochs": 60, "norm": "rafdb", "drop_last": False}

    def __init__(self, lam_ce: float = 0.5, lam_weighted: float = 0.5, lam_jsd: float = 0.5,
                 slope: float = -15.0, ramp: bool = True,
                 mu_correct: tuple[float, float] = (0.5, 0.5), std_correct: float = 0.8, ratio_correct: float = 2.0,
                 mu_wrong: tuple[float, float] = (0.30, 0.15), std_wrong: float = 0.91, ratio_wrong: float = 6.0,
                 jsd_reduction: str = "sum", **options):
        super().__init__(**options)
        if jsd_reduction not in ("sum", "mean"):
            raise RobustferError(f"jsd_reduction {jsd_reduction!r}: use sum (official) or mean")
        self.lam_ce, self.lam_weighted, self.lam_jsd = float(lam_ce), float(lam_weighted), float(lam_jsd)
        self.slope, self.ramp = float(slope), bool(ramp)
        self.mu_correct = (float(mu_correct[0]), float(mu_correct[1]))
        self.mu_wrong = (float(mu_wrong[0]), float(mu_wrong[1]))
        self.cov_correct = covariance(float(std_correct), float(ratio_correct), -1.0)  # off-diagonal times eps(e)
        self.cov_wrong = covariance(float(std_wrong), float(ratio_wrong), +1.0)
        self.jsd_reduction = jsd_reduction

    # --- data ---
    def make_views(self, x, g, spec: ViewSpec):
        """'orig': noise -> resize -> normalise -> flip -> erase (official); 'flip': the same tensor mirrored."""
        if spec.recipe != "official":
            orig = super().make_views(x, g, spec)["weak"]
        else:
            f = pixel_noise_uint8(A.to_float(x, spec.channels), g)
            f = A.hflip(A.normalize(A.resize(f, spec.size), spec.norm), g)
            orig = A.random_erasing(f, g, p=0.5, scale=(0.02, 0.3), ratio=(0.3, 3.3), value=0.0)
        return {"orig": orig, "flip": orig.flip(-1)}

    # --- objective ---
    def eps(self, state: State) -> float:
        """The correlation ramp at this epoch (1 throughout with ramp=False, as the official sch_bool)."""
        return correlation_ramp(state.epoch, state.epochs, self.slope) if self.ramp else 1.0

    def weight(self, probs: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
        """Noise-aware adaptive weight w (N,): the correct- or wrong-branch Gaussian density at (p_GT, p_NN)."""
        p_gt, p_nn, correct = ambiguity_coordinates(probs, labels)
        v = torch.stack([p_gt, p_nn], dim=1)
        diag_t, off_t = self.cov_correct
        w_true = gaussian_2d(v, self.mu_correct, diag_t, off_t * eps)
        w_false = gaussian_2d(v, self.mu_wrong, *self.cov_wrong)
        return torch.where(correct, w_true, w_false)

    def loss(self, model, batch: Batch, state: State):
        z = model(batch.views["orig"]).float()  # two SEPARATE passes: per-view BatchNorm statistics
        z_flip = model(batch.views["flip"]).float()
        ce = F.cross_entropy(z, batch.labels, reduction="none")
        w = self.weight(z.softmax(1), batch.labels, self.eps(state))
        loss = (self.lam_ce * ce.mean() + self.lam_weighted * (w * ce).mean()
                + self.lam_jsd * jsd_averaged_logits(z, z_flip, self.jsd_reduction))
        return loss, {"weight": w.detach()}
