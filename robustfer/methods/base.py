"""The method interface: a training method says which heads it needs, how its views are made, and
what its loss is. It never touches files, devices or loops; the trainer runs every method the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from robustfer import augment as A
from robustfer.models import Classifier


@dataclass
class ViewSpec:
    """How a batch becomes network input: size, channels and normalisation of the model, and the recipe."""

    size: int
    channels: int
    norm: str = "imagenet"
    recipe: str = "official"


@dataclass
class Batch:
    """One mini-batch: the method's views, noisy labels, dataset indices, and annotations where present."""

    views: dict[str, torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor
    soft: torch.Tensor | None = None
    votes: torch.Tensor | None = None
    generator: torch.Generator | None = None  # the trainer's seeded stream, for methods that sample


@dataclass
class State:
    """Where training stands; methods read it, and may keep their own tensors in `tensors`."""

    epoch: int = 0
    epochs: int = 1
    step: int = 0
    num_train: int = 0
    num_classes: int = 0
    label_mode: str = "majority"  # the training data's label mode (FERPlus --label-mode; else majority)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base class. Subclasses set `name`, `summary`, `paper` and implement `loss`."""

    name = "base"
    summary = ""
    paper = ""
    # The official recipe (methods.md); `--recipe cpu` replaces it by one shared quick protocol.
    recipe: dict = {}
    # False where the loss scale makes plain SGD diverge (summed losses): then the compact model's
    # default is the official (Adam) recipe rather than the shared SGD cpu recipe.
    cpu_recipe_ok = True
    # True where every trainable parameter gets a gradient in every step (under torchrun DDP then skips its
    # per-step search for unused parameters); False (safe) where a step may leave some without one.
    all_parameters_every_step = False

    def __init__(self, **options):
        self.options = options

    @classmethod
    def recipe_for(cls, dataset: str | None) -> dict:
        """The official recipe on `dataset` (methods.md's table); one for every data set unless overridden."""
        return cls.recipe

    @classmethod
    def options_for(cls, dataset: str | None) -> dict:
        """The official method options on `dataset` (`--method-opt` overrides them); none by default."""
        return {}

    # --- network ---
    def build(self, backbone: nn.Module, num_classes: int, classes: tuple[str, ...] | None = None, spec=None) -> nn.Module:
        """The trained network (`classes`: the data set's class names, for methods with a class prior; `spec`:
        the ViewSpec, for heads whose size depends on the input's)."""
        return Classifier(backbone, num_classes)

    def test_network(self, model: nn.Module) -> nn.Module:
        """The part of the trained network that runs at test time, export and prediction (default: all of it;
        its forward(x) gives the test-time logits)."""
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """Optimiser parameter groups (one group by default)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    # --- data ---
    def make_views(self, x: torch.Tensor, g: torch.Generator, spec: ViewSpec) -> dict[str, torch.Tensor]:
        """uint8 batch on the device -> named, normalised views. Default: one 'weak' view (crop + flip)."""
        f = A.to_float(x, spec.channels)
        pad = max(1, round(f.shape[-1] / 12))  # 4 px at 48 px, as the usual 48 px FER crop
        f = A.hflip(A.random_crop(f, g, pad), g)
        return {"weak": A.normalize(A.resize(f, spec.size), spec.norm)}

    # --- objective ---
    def loss(self, model: nn.Module, batch: Batch, state: State) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss and per-sample statistics (e.g. 'flagged_noisy': bool N) for the trainer to score."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, batch: Batch, state: State) -> None:
        """Hook after each optimiser step, with the updated model (e.g. per-sample target updates)."""

    def on_epoch_end(self, state: State) -> None:
        """Hook after each epoch (target updates, relabelling)."""

    def drop_last(self) -> bool:
        return bool(self.recipe.get("drop_last", False))
