"""CE baseline: plain cross-entropy on the (possibly noisy) labels (methods.md §6).

Official recipe: flip-or-noise augmentation + RandomErasing, Adam 2e-4, weight decay 1e-4, ExpLR(0.9),
batch 64, 60 epochs. With FERPlus's non-majority label modes the target follows microsoft/FERPlus's
`cost_func`: soft-target CE for `crossentropy`, a one-hot drawn from the vote distribution every batch
for `probability`, and -log max_k(t_k p_k) for `multi_target` (t = (1-0.001)·[votes>0] + 0.001).
The mode is the training data's (`state.label_mode`, from `--label-mode`) unless the `label_mode`
option overrides it (`--method-opt label_mode=crossentropy`). Stat `argmax`: the predicted class of each
training view (the trainer scores it against the clean labels under synthetic noise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robustfer import augment as A
from robustfer.methods.base import Batch, Method, State, ViewSpec


class CE(Method):
    name = "ce"
    summary = "cross-entropy on the given labels (the baseline)"
    paper = "baseline of SCN (CVPR 2020), RUL (NeurIPS 2021), EAC (ECCV 2022)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    recipe = {"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4, "schedule": "exp", "gamma": 0.9,
              "batch_size": 64, "epochs": 60, "norm": "imagenet", "drop_last": False}

    def __init__(self, label_smoothing: float = 0.0, label_mode: str | None = None, **options):
        super().__init__(**options)
        self.label_smoothing = float(label_smoothing)
        self.label_mode = label_mode

    def make_views(self, x, g, spec: ViewSpec):
        if spec.recipe != "official":
            return Method.make_views(self, x, g, spec)  # explicit, so other methods may borrow CE's views
        f = A.flip_or_noise(A.to_float(x, spec.channels), g)
        f = A.normalize(A.resize(f, spec.size), spec.norm)
        return {"weak": A.random_erasing(f, g, p=0.5, scale=(0.02, 0.25))}

    def loss(self, model, batch: Batch, state: State):
        logits = model(batch.views["weak"])
        return self.label_loss(logits, batch, self.label_mode or state.label_mode), {"argmax": logits.detach().argmax(1)}

    def label_loss(self, logits: torch.Tensor, batch: Batch, mode: str) -> torch.Tensor:
        """The loss of the label mode (majority CE where the data set has no votes)."""
        if mode == "majority" or batch.soft is None:
            return F.cross_entropy(logits, batch.labels, label_smoothing=self.label_smoothing)
        t = batch.soft
        if mode == "probability":
            pick = torch.multinomial(t.float(), 1, generator=batch.generator).squeeze(1)
            return F.cross_entropy(logits, pick, label_smoothing=self.label_smoothing)
        if mode == "crossentropy":
            return F.cross_entropy(logits, t)
        if mode == "multi_target":
            t = (1 - 1e-3) * (t > 0).float() + 1e-3
            p = logits.float().softmax(1)
            return -torch.log((t * p).amax(1).clamp_min(1e-12)).mean()
        raise ValueError(f"unknown label mode {mode!r}")
