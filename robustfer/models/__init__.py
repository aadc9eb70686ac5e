"""Model registry (timm-style): `create_model(name, num_classes)` and `create_backbone(name)`.

A backbone maps images N x C x H x W to what its heads take (`forward`): the pooled feature, N x
feature_dim, for the CNNs and `vit_s` (which also give a conv map, `forward_map`, or tokens); the patch
tokens, N x L x D, for a backbone with `head_input = "tokens"` (`vit_lq`). Methods put their heads on it
with `make_head(backbone, C)`, so every method works with every backbone (see methods/base.py).
Regularisers a network carries are its modules' `extra_loss()`; the trainer adds `extra_loss(model)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from robustfer.errors import RobustferError
from robustfer.models.checkpoint import load_init
from robustfer.models.compact import STEM_CONFIG, STEM_W75_CONFIG, CompactCNN
from robustfer.models.resnet import ResNetBackbone
from robustfer.models.vit import ViT


@dataclass(frozen=True)
class ModelEntry:
    """A registered backbone: constructor(in_chans), default input size and channels, and, for the CPU
    models, the epochs of `--recipe cpu` (what fits the model's time budget on 2 cores)."""

    ctor: Callable[..., nn.Module]
    size: int
    chans: int
    cpu_epochs: int | None = None   # None: not a CPU model (the default recipe is the method's official one)


MODELS: dict[str, ModelEntry] = {
    # the original compact CNN: 15 epochs = 30 min on 2 cores (kept so earlier tables reproduce)
    "compact": ModelEntry(lambda in_chans=1: CompactCNN(in_chans), 48, 1, 15),
    # the default since issue 12: strided stem, same widths, 48 px; the same accuracy as compact at 15 epochs
    # (84.54% FERPlus test) in 19.5 instead of ~24 min, 1.3x the inference speed (BENCHMARKS.md, pareto.py)
    "compact_s": ModelEntry(lambda in_chans=1: CompactCNN(in_chans, STEM_CONFIG, stem_stride=2), 48, 1, 15),
    # strided stem at 40 px input: the fastest (1.9x compact's inference), 2 points less accurate per epoch
    "compact_s40": ModelEntry(lambda in_chans=1: CompactCNN(in_chans, STEM_CONFIG, stem_stride=2), 40, 1, 17),
    # compact_s at 0.75x the widths: the best measured within 15 minutes (83.87% FERPlus test, 17 epochs)
    "compact_s_w75": ModelEntry(lambda in_chans=1: CompactCNN(in_chans, STEM_W75_CONFIG, stem_stride=2), 48, 1, 17),
    # timm ViT, 48 px, patch 6 (64 tokens), dim 128, depth 6, 4 heads (models/vit.py): mean-pooled tokens + Linear;
    # trains at ~0.55x compact_s's img/s, so 8 epochs ~ compact_s's 15 in wall time
    "vit_s": ModelEntry(lambda in_chans=1, **kw: ViT(in_chans, **kw), 48, 1, 8),
    # the same encoder + the label-query decoder on its tokens and the uniformity regulariser (methods.md §5)
    "vit_lq": ModelEntry(lambda in_chans=1, **kw: ViT(in_chans, head="label_query", **kw), 48, 1, 8),
    "resnet18": ModelEntry(lambda in_chans=3: ResNetBackbone("resnet18", in_chans), 224, 3),
    "resnet50": ModelEntry(lambda in_chans=3: ResNetBackbone("resnet50", in_chans), 224, 3),
}
DEFAULT_MODEL = "compact_s"


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise RobustferError(f"unknown model {name!r}; use one of {', '.join(MODELS)}")
    return MODELS[name]


def model_defaults(name: str) -> tuple[int, int]:
    """(input size, input channels) a model expects by default."""
    e = model_entry(name)
    return e.size, e.chans


def create_backbone(name: str, in_chans: int | None = None, **options) -> nn.Module:
    """A feature extractor with `feature_dim` and `forward(x)` (the heads' input); `options` go to the
    constructor (e.g. `uniform_weight`, `patch_size` of the ViTs)."""
    e = model_entry(name)
    return e.ctor(in_chans or e.chans, **options)


def make_head(backbone: nn.Module, num_classes: int) -> nn.Module:
    """A classification head on `backbone`'s output: nn.Linear(feature_dim, C) on the pooled feature, or
    the backbone's own token head (`backbone.make_head(C)`) where `backbone.head_input == "tokens"`."""
    if getattr(backbone, "head_input", "pooled") == "tokens":
        return backbone.make_head(num_classes)
    return nn.Linear(backbone.feature_dim, num_classes)


def regularisers(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that define `extra_loss()` (found once: nn.Module's attribute lookup of a
    missing name costs ~30 us per module, 5 ms a step over vit_lq's 161 modules)."""
    return [m for m in model.modules() if callable(getattr(m, "extra_loss", None))]


def extra_loss(model: nn.Module | list[nn.Module]) -> torch.Tensor | float:
    """Sum of `extra_loss()` over the modules of `model` that define it (regularisers a network carries,
    e.g. vit_lq's label-embedding uniformity), or over a `regularisers(model)` list; 0 when none does."""
    mods = model if isinstance(model, list) else regularisers(model)
    return sum(m.extra_loss() for m in mods)


class Classifier(nn.Module):
    """Backbone + one head (`make_head`: linear on the pooled feature by default): the plain single-head
    network most methods use."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = make_head(backbone, num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x))


def create_model(name: str, num_classes: int, in_chans: int | None = None, **options) -> Classifier:
    """Backbone `name` with its classifier head for `num_classes` classes."""
    return Classifier(create_backbone(name, in_chans, **options), num_classes)


__all__ = ["DEFAULT_MODEL", "MODELS", "Classifier", "ModelEntry", "model_entry", "create_backbone", "create_model",
           "extra_loss", "load_init", "make_head", "model_defaults", "regularisers"]
