"""Model registry (timm-style): `create_model(name, num_classes)` and `create_backbone(name)`.

A backbone maps images N x C x H x W to a conv map (`forward_map`) and a pooled feature
(`forward`, N x feature_dim). Methods put their own heads on it (see methods/base.py).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from robustfer.errors import RobustferError
from robustfer.models.checkpoint import load_init
from robustfer.models.compact import CompactCNN
from robustfer.models.resnet import ResNetBackbone

# name -> (constructor(in_chans) -> backbone, default input size, default input channels)
MODELS: dict[str, tuple[Callable[..., nn.Module], int, int]] = {
    "compact": (lambda in_chans=1: CompactCNN(in_chans), 48, 1),
    "resnet18": (lambda in_chans=3: ResNetBackbone("resnet18", in_chans), 224, 3),
    "resnet50": (lambda in_chans=3: ResNetBackbone("resnet50", in_chans), 224, 3),
}


def model_defaults(name: str) -> tuple[int, int]:
    """(input size, input channels) a model expects by default."""
    if name not in MODELS:
        raise RobustferError(f"unknown model {name!r}; use one of {', '.join(MODELS)}")
    return MODELS[name][1], MODELS[name][2]


def create_backbone(name: str, in_chans: int | None = None) -> nn.Module:
    """A feature extractor with `feature_dim`, `forward_map(x)` and `forward(x)` (pooled)."""
    model_defaults(name)
    ctor, _, chans = MODELS[name]
    return ctor(in_chans or chans)


class Classifier(nn.Module):
    """Backbone + one linear head: the plain single-head network most methods use."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x))


def create_model(name: str, num_classes: int, in_chans: int | None = None) -> Classifier:
    """Backbone `name` with a linear classifier for `num_classes` classes."""
    return Classifier(create_backbone(name, in_chans), num_classes)


__all__ = ["MODELS", "Classifier", "create_backbone", "create_model", "load_init", "model_defaults"]
