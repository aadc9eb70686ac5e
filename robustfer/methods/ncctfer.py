"""NCCTFER: class-adaptive threshold + negative-class-guided consistency (methods.md §1; arXiv 2305.01884;
Naveen-siva-kumar/NCCTFER `algorithm/noisyfer_aug_new_arch.py`, `algorithm/loss.py`).

Shared encoder g with a positive head h_p (`fc`, the test-time head) and a negative head h_n (`neg`).
Warm-up (epoch < W): mean CE of h_p on both views. Then, per view and mini-batch, tau_c = batch mean of
clamp(p, 0.35, 0.65)_{.,c}; confident = p~_{y} >= tau_{y} - 1e-6; L_pos = SUM CE over the confident
(MEAN CE over the batch if none); on the weak-view non-confident U, L_neg = -(1/|U|) sum m * q^w *
sg[log q^s] over the k least likely classes of q^w. L = (L_pos^w + L_pos^s)/2 + L_neg.

Choices where the spec is silent: the views are the method's own under every recipe (they define it);
during warm-up `flagged_noisy` is all False (nothing is excluded from the loss then), afterwards it is
"not confident in the weak view", the set U; probabilities and losses are computed in float32 under
autocast; `label_prob` (weak-view softmax of the given label) is reported as a per-sample diagnostic.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustfer import augment as A
from robustfer import randaugment as RA
from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State, ViewSpec
from robustfer.models import make_head

CLAMP = (0.35, 0.65)   # hard-coded in Sai_weighted_CCE_ (eps=0.35); the `--eps` argument is unused
TOLERANCE = 1e-6       # ties (all p~_c clamped at 0.35) count as confident, independent of float rounding


class NCCTFERNet(nn.Module):
    """Encoder + positive head `fc` (forward = test-time logits) + negative head `neg`, both
    Linear(feature -> C) on the same, not detached, feature (official `positive/negative_classifier`);
    `models.make_head` builds them, so a token backbone (vit_lq) gets two label-query heads. (Their
    uniformity regularisers are added by the trainer even in warm-up, so h_n's label embeddings then move.)"""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = make_head(backbone, num_classes)
        self.neg = make_head(backbone, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_p logits, h_n logits) from one encoder pass."""
        f = self.backbone(x)
        return self.fc(f), self.neg(f)


def clamped_probs(logits: torch.Tensor, lo: float = CLAMP[0], hi: float = CLAMP[1]) -> torch.Tensor:
    """p~ = clamp(softmax(z), lo, hi) in float32, without gradient (only used for selection)."""
    return logits.detach().float().softmax(1).clamp(lo, hi)


def class_thresholds(p_tilde: torch.Tensor) -> torch.Tensor:
    """tau_c = mean over the WHOLE batch of p~_{.,c}, whatever the labels (loss.py `avg_post`)."""
    return p_tilde.mean(0)


def confident_mask(p_tilde: torch.Tensor, labels: torch.Tensor, tol: float = TOLERANCE) -> torch.Tensor:
    """S = {i : p~_{i,y_i} >= tau_{y_i} - tol}: the samples whose label probability reaches its class's
    batch threshold (bool, N)."""
    tau = class_thresholds(p_tilde)
    py = p_tilde.gather(1, labels.view(-1, 1)).squeeze(1)
    return py >= tau[labels] - tol


def positive_loss(logits: torch.Tensor, labels: torch.Tensor, confident: torch.Tensor) -> torch.Tensor:
    """SUM of CE over the confident samples; MEAN CE over the whole batch when none is confident
    (loss.py: `reduction="sum"` vs the fallback's default mean; the scale jump is kept)."""
    z = logits.float()
    if bool(confident.any()):
        return F.cross_entropy(z[confident], labels[confident], reduction="sum")
    return F.cross_entropy(z, labels)


def negative_mask(q: torch.Tensor, k: int) -> torch.Tensor:
    """1 for the k smallest entries of each row of q, classes tied with the k-th smallest included
    (`q <= topk(q, k, largest=False)[..., -1]` with the k-th value taken as the row's max of the k)."""
    kth = torch.topk(q, k, dim=1, largest=False).values.amax(1, keepdim=True)
    return (q <= kth).to(q.dtype)


def negative_loss(neg_w: torch.Tensor, neg_s: torch.Tensor, k: int, grad: str = "weak") -> torch.Tensor:
    """L_neg = -(1/|U|) sum_i sum_c m_ic q^w_ic log q^s_ic on the rows given (U). grad='weak' (official):
    log q^s is detached (`copy.copy` of the strong logits gives a detached leaf), so only q^w carries
    gradient; grad='both' also back-propagates through log q^s."""
    q_w = neg_w.float().softmax(1)
    s = neg_s.float()
    log_q_s = F.log_softmax(s.detach() if grad == "weak" else s, dim=1)
    m = negative_mask(q_w.detach(), k)
    return -(m * q_w * log_q_s).sum(1).mean()


class NCCTFER(Method):
    name = "ncctfer"
    summary = "class-adaptive batch threshold + negative-class consistency on non-confident samples"
    paper = "Gera et al., NCCTFER (arXiv 2305.01884)"
    # RAF-DB/FERPlus recipe (methods.md): Adam encoder 1e-4, heads 1e-3, no decay, constant lr, batch 128 dl, 40 ep.
    # SUM-reduced positive loss: ~60x gradient scale at batch 128; plain SGD diverges, Adam (official) does not.
    cpu_recipe_ok = False
    recipe = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "constant", "batch_size": 128,
              "epochs": 40, "norm": "imagenet", "drop_last": True}
    views = ("weak", "strong")
    # AffectNet (main_affectnet.py): lr ÷10 at the START of epochs 0 and 10 (encoder 1e-5 then 1e-6, heads x10),
    # class-balanced sampling with replacement, 0.5/0.5 normalisation, 12 epochs, k = 3, warm-up 3
    affectnet_recipe = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "step", "milestones": [0, 10],
                        "gamma": 0.1, "batch_size": 128, "epochs": 12, "norm": "half", "drop_last": False,
                        "sampler": "balanced"}

    @classmethod
    def recipe_for(cls, dataset):
        return cls.affectnet_recipe if dataset == "affectnet" else cls.recipe

    @classmethod
    def options_for(cls, dataset):
        return {"k": 3, "warmup": 3} if dataset == "affectnet" else {}

    def __init__(self, warmup: int = 4, k: int = 4, neg_grad: str = "weak", head_lr_mult: float = 10.0,
                 **options):
        super().__init__(**options)
        if neg_grad not in ("weak", "both"):
            raise RobustferError(f"ncctfer option neg_grad must be 'weak' (official) or 'both', not {neg_grad!r}")
        self.warmup, self.k, self.neg_grad = int(warmup), int(k), neg_grad
        self.head_lr_mult = float(head_lr_mult)

    def build(self, backbone: nn.Module, num_classes: int, classes=None, spec=None) -> nn.Module:
        if not 1 <= self.k <= num_classes:
            raise RobustferError(f"ncctfer option k={self.k} must lie in 1..{num_classes} (the number of classes)")
        return NCCTFERNet(backbone, num_classes)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Encoder at lr, h_p and h_n at head_lr_mult * lr (official Adam groups lr2=1e-4 / lr=1e-3)."""
        return [{"params": list(model.backbone.parameters()), "lr": lr},
                {"params": list(model.fc.parameters()), "lr": lr * self.head_lr_mult},
                {"params": list(model.neg.parameters()), "lr": lr * self.head_lr_mult}]

    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        """Weak = RandomCrop(pad 4*size/224, zeros) + flip; strong = own crop/flip + FixMatch RandAugmentMC
        (v ~ 1..9) + Cutout 16*size/224 grey 127, at the model's input size, then normalised."""
        f = A.resize(A.to_float(x, spec.channels), spec.size)
        weak, strong = RA.weak_strong(f, g, RA.NCCTFER)
        return {"weak": A.normalize(weak, spec.norm), "strong": A.normalize(strong, spec.norm)}

    def loss_terms(self, model: nn.Module, batch: Batch, state: State) -> tuple[dict[str, torch.Tensor], dict]:
        """The loss's parts ('pos', and 'neg' when U is non-empty) and the per-sample statistics."""
        y = batch.labels
        if state.epoch < self.warmup:  # h_n is not evaluated: it gets no gradient and keeps its init
            z_w, z_s = model(batch.views["weak"]), model(batch.views["strong"])
            pos = (F.cross_entropy(z_w.float(), y) + F.cross_entropy(z_s.float(), y)) / 2
            stats = {"flagged_noisy": torch.zeros_like(y, dtype=torch.bool),
                     "label_prob": z_w.detach().float().softmax(1).gather(1, y.view(-1, 1)).squeeze(1)}
            return {"pos": pos}, stats
        z_w, n_w = model.heads(batch.views["weak"])     # each view its own forward pass (own BN statistics)
        z_s, n_s = model.heads(batch.views["strong"])
        conf_w = confident_mask(clamped_probs(z_w), y)
        conf_s = confident_mask(clamped_probs(z_s), y)
        terms = {"pos": (positive_loss(z_w, y, conf_w) + positive_loss(z_s, y, conf_s)) / 2}
        unconf = ~conf_w
        if bool(unconf.any()):
            terms["neg"] = negative_loss(n_w[unconf], n_s[unconf], self.k, self.neg_grad)
        stats = {"flagged_noisy": unconf,
                 "label_prob": z_w.detach().float().softmax(1).gather(1, y.view(-1, 1)).squeeze(1)}
        return terms, stats

    def loss(self, model: nn.Module, batch: Batch, state: State):
        terms, stats = self.loss_terms(model, batch, state)
        return sum(terms.values()), stats
