"""POI — Prior-based Objective Inference (arXiv 2411.13024; methods.md §4).

A REALISATION FROM THE ABSTRACT: the paper's code was announced but never released and its body is not
public, so every loss, schedule and number below is robustfer's choice, named here.

PIN (prior inference network, training only). K = 4 branches look at the augmented face: the whole
face and three horizontal bands cut at fixed ratios of the face height (full width; FERPlus / RAF-DB
faces are aligned crops): upper rows [0, 0.5) (brows + eyes), middle [0.3, 0.75) (nose, cheeks),
lower [0.55, 1.0) (mouth, chin). A CNN pools globally, so each band is fed at its native size (cost
proportional to its area); a ViT's band is resized to the model's square input. Each branch encodes its
crop (`pin_encoders`: "separate" = one encoder per branch, the default, as deep mutual learning trains
separate networks; "shared" = one encoder for all four) into a feature f, predicts A = 14 latent
action-unit activations a = sigmoid(W_a f) in [0,1]^A (AU 1 2 4 5 6 7 9 12 14 15 16 20 23 26; no AU
labels exist, the fixed prior is what makes them AUs) and turns them into emotion logits

    z_k = beta * (2 P a - |P|) + R f,

the negative squared distance -||a - P_c||^2 of a to each class's binary EMFACS prototype P_c, up to a
term common to all classes (||a||^2, which softmax ignores); |P|_c = number of AUs in P_c; beta > 0 a
learned scale (exp of a parameter, starting at 1); R a learned residual Linear(f -> C) starting at
zero. Prototypes (methods.md §4), rows built by class NAME for the data set's own list: happiness
AU6+12, sadness 1+4+15, surprise 1+2+5+26, fear 1+2+4+5+7+20+26, anger 4+5+7+23, disgust 9+15+16,
contempt 12+14, neutral none (the zero prototype: all AUs off). A class without a prototype is an error.
PIN loss = mean_k [CE(z_k, y) + dml * KL(sg[e] || softmax z_k)], e = mean_k softmax(z_k), the
detached ensemble mean (deep mutual learning). The soft label is s = sg[e].

TRN (target recognition network, the only network at test time): the backbone with one linear head,
the same module as CE's, trained with

    L_TRN = mean_i [ c_i CE(z_i, y_i) + (1 - c_i) KL(s_i || p_i) - lam log c_i ],   L = L_TRN + L_PIN,

c_i = sigmoid(MLP([f_i, onehot(y_i), s_i])) from the uncertainty module: a 2-layer MLP (hidden 64) on
TRN's pooled feature f_i (detached: the module reads the representation without reshaping it), the
given label and PIN's soft label (option `conf_input="features"` drops the label and s, the spec's
literal "head on TRN features"; without them c cannot tell which label of an image is doubtful). For
fixed losses the optimum is c = lam / (CE - KL) where CE - KL > lam, else c -> 1, so the regulariser
keeps c off 0 (always trusting PIN) and a label that PIN contradicts gets a low c.

Schedule: `warmup` epochs (default 5 of the official 60, which bench scales) train PIN with its loss and
TRN with plain CE (c is not used yet); then both train jointly, one optimiser step per batch on L, one
Adam group. Recipe: CE's official one (Adam 2e-4, weight decay 1e-4, ExpLR 0.9, batch 64, 60 epochs,
flip-or-noise + erasing views; the crops are cut from TRN's view), so CE at its own recipe IS POI's
control. PIN's encoders start as copies of the backbone as built (with `--init`, the pretrained start).

Stats per sample: `confidence` (c, joint phase), `pin_argmax` (PIN's class), `argmax` (TRN's class):
the trainer reports the mean c on flipped vs clean labels and per class, and how often each argmax
recovers the clean class of a flipped label.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer.data.classes import canonical_name
from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State, ViewSpec
from robustfer.methods.ce import CE
from robustfer.models import Classifier

AUS = (1, 2, 4, 5, 6, 7, 9, 12, 14, 15, 16, 20, 23, 26)
PROTOTYPES: dict[str, tuple[int, ...]] = {
    "neutral": (),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "anger": (4, 5, 7, 23),
    "disgust": (9, 15, 16),
    "contempt": (12, 14),
}
# (name, first row, last row) as fractions of the face height; full width
REGIONS = (("face", 0.0, 1.0), ("upper", 0.0, 0.5), ("middle", 0.3, 0.75), ("lower", 0.55, 1.0))


def prior_matrix(classes: tuple[str, ...] | list[str]) -> torch.Tensor:
    """P (C x A, 0/1): row c marks the AUs of class c's EMFACS prototype, looked up by class name."""
    rows = []
    for name in classes:
        key = canonical_name(name)
        if key not in PROTOTYPES:
            raise RobustferError(f"poi: no action-unit prototype for class {name!r}; POI's prior knows "
                                 f"{', '.join(PROTOTYPES)} (rename the class or train another --method)")
        rows.append([1.0 if au in PROTOTYPES[key] else 0.0 for au in AUS])
    return torch.tensor(rows)


def region_rows(height: int, top: float, bottom: float) -> tuple[int, int]:
    """Pixel rows [r0, r1) of a band given as fractions of the face height."""
    return round(top * height), round(bottom * height)


def crop_region(x: torch.Tensor, top: float, bottom: float, square: int | None = None) -> torch.Tensor:
    """The band of rows [top, bottom) of each face (N x C x H x W), resized to `square` px when given."""
    r0, r1 = region_rows(x.shape[-2], top, bottom)
    band = x[..., r0:r1, :]
    if square is None:
        return band
    return F.interpolate(band, size=(square, square), mode="bilinear", align_corners=False, antialias=False)


def pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled feature of any backbone (token backbones: the mean token)."""
    f = backbone(x)
    return f if f.dim() == 2 else f.mean(1)


class AUBranch(nn.Module):
    """One PIN branch head: feature -> AU activations -> prior logits + learned residual."""

    def __init__(self, feature_dim: int, prior: torch.Tensor):
        super().__init__()
        self.au = nn.Linear(feature_dim, prior.shape[1])
        self.residual = nn.Linear(feature_dim, prior.shape[0])
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.log_beta = nn.Parameter(torch.zeros(()))
        self.register_buffer("prior", prior.clone())

    def activations(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.au(f))

    def prior_logits(self, a: torch.Tensor) -> torch.Tensor:
        """beta (2 P a - |P|) = beta (||a||^2 - ||a - P_c||^2): the prototype match, one column per class."""
        p = self.prior.to(a.dtype)
        return self.log_beta.exp() * (2.0 * a @ p.T - p.sum(1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.prior_logits(self.activations(f)) + self.residual(f)


class PIN(nn.Module):
    """The prior inference network: four region branches; forward gives their logits, K x N x C."""

    def __init__(self, backbone: nn.Module, prior: torch.Tensor, encoders: str = "separate"):
        super().__init__()
        if encoders not in ("separate", "shared"):
            raise RobustferError(f"poi option pin_encoders must be 'separate' or 'shared', not {encoders!r}")
        k = len(REGIONS)
        self.shared = encoders == "shared"
        self.encoders = nn.ModuleList(copy.deepcopy(backbone) for _ in range(1 if self.shared else k))
        self.heads = nn.ModuleList(AUBranch(backbone.feature_dim, prior) for _ in range(k))
        # a ViT takes a fixed square input: its bands are resized back to the face size
        self.square = hasattr(backbone, "vit")

    def crops(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[-1] if self.square else None
        return [x if (top, bot) == (0.0, 1.0) else crop_region(x, top, bot, size) for _, top, bot in REGIONS]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i, crop in enumerate(self.crops(x)):
            enc = self.encoders[0 if self.shared else i]
            out.append(self.heads[i](pooled(enc, crop.contiguous(memory_format=torch.channels_last))))
        return torch.stack(out)


class ConfidenceHead(nn.Module):
    """The uncertainty module: c = sigmoid(MLP([sg f, onehot(y), s])) in (0, 1), or from f alone."""

    def __init__(self, feature_dim: int, num_classes: int, inputs: str = "all", hidden: int = 64):
        super().__init__()
        if inputs not in ("all", "features"):
            raise RobustferError(f"poi option conf_input must be 'all' or 'features', not {inputs!r}")
        self.inputs, self.num_classes = inputs, num_classes
        width = feature_dim + (2 * num_classes if inputs == "all" else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        parts = [f.detach().float()]
        if self.inputs == "all":
            parts += [F.one_hot(labels, self.num_classes).float(), soft.detach().float()]
        return torch.sigmoid(self.mlp(torch.cat(parts, 1))).squeeze(1)


class POINet(nn.Module):
    """TRN (`trn`, a CE Classifier: forward = test-time logits) + PIN (`pin`) + uncertainty module (`conf`)."""

    def __init__(self, backbone: nn.Module, num_classes: int, prior: torch.Tensor, encoders: str, conf_input: str):
        super().__init__()
        self.pin = PIN(backbone, prior, encoders)  # copies of the backbone as built (pretrained start)
        self.trn = Classifier(backbone, num_classes)
        self.conf = ConfidenceHead(backbone.feature_dim, num_classes, conf_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trn(x)


def pin_loss(branch_logits: torch.Tensor, labels: torch.Tensor, dml: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_k [CE(z_k, y) + dml KL(sg[e] || p_k)], e): deep mutual learning to the detached ensemble mean e."""
    z = branch_logits.float()
    log_p = F.log_softmax(z, dim=2)
    ens = log_p.exp().mean(0).detach()
    ce = torch.stack([F.cross_entropy(zk, labels) for zk in z]).mean()
    kl = torch.stack([F.kl_div(lp, ens, reduction="batchmean") for lp in log_p]).mean()
    return ce + dml * kl, ens


def trn_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor, c: torch.Tensor,
             lam: float) -> torch.Tensor:
    """mean_i [c_i CE(z_i, y_i) + (1 - c_i) KL(s_i || p_i) - lam log c_i]."""
    z = logits.float()
    ce = F.cross_entropy(z, labels, reduction="none")
    kl = F.kl_div(F.log_softmax(z, 1), soft, reduction="none").sum(1)
    return (c * ce + (1.0 - c) * kl - lam * torch.log(c.clamp_min(1e-6))).mean()


class POI(Method):
    name = "poi"
    summary = "a facial-region / action-unit prior network gives soft labels; an uncertainty module weighs them"
    paper = "Prior-based Objective Inference, arXiv 2411.13024 (realised from the abstract; code never released)"
    recipe = CE.recipe

    def __init__(self, warmup: int = 5, lam: float = 0.5, dml: float = 1.0, pin_encoders: str = "separate",
                 conf_input: str = "all", **options):
        super().__init__(**options)
        self.warmup, self.lam, self.dml = int(warmup), float(lam), float(dml)
        self.pin_encoders, self.conf_input = pin_encoders, conf_input

    def build(self, backbone: nn.Module, num_classes: int, classes: tuple[str, ...] | None = None, spec=None) -> nn.Module:
        if classes is None or len(classes) != num_classes:
            raise RobustferError("poi needs the data set's class names to build its action-unit prior")
        return POINet(backbone, num_classes, prior_matrix(classes), self.pin_encoders, self.conf_input)

    def test_network(self, model: nn.Module) -> nn.Module:
        return model.trn

    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        return CE.make_views(self, x, g, spec)  # CE's views: the control differs in the loss only

    def loss(self, model, batch: Batch, state: State):
        x, y = batch.views["weak"], batch.labels
        f = model.trn.backbone(x)
        z = model.trn.fc(f)
        l_pin, s = pin_loss(model.pin(x), y, self.dml)
        stats = {"argmax": z.detach().argmax(1), "pin_argmax": s.argmax(1)}
        if state.epoch < self.warmup:
            return F.cross_entropy(z.float(), y) + l_pin, stats
        c = model.conf(f if f.dim() == 2 else f.mean(1), y, s)  # token backbones: the mean token
        stats["confidence"] = c.detach()
        return trn_loss(z, y, s, c, self.lam) + l_pin, stats
