"""Compact VGG-style CNNs for 48x48 faces that train in minutes per epoch on 2 CPU cores.

`compact` is the original model (every earlier CPU table used it). The `compact_s*` variants replace
its full-resolution conv + max-pool by one stride-2 stem conv: the same weights and the same maps from
the second conv on, but the widest, memory-bound activations (32 channels at 48x48, their BN, ReLU and
pool) are gone, which makes a training step ~1.4x faster on this CPU (benchmarks/pareto.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# Widths per conv ('M' = 2x2 max-pool): 48 -> 24 -> 12 -> 6 -> 3 spatially; about 2.3M parameters.
CONFIG = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 512)
# The strided-stem layout: conv 32 stride 2 (48 -> 24), then as CONFIG from its second conv.
STEM_CONFIG = (32, 64, "M", 128, 128, "M", 256, 256, "M", 512)
# STEM_CONFIG with every width x 0.75 (0.56x the multiply-adds): the most accurate in 15 minutes (issue 12).
STEM_W75_CONFIG = (24, 48, "M", 96, 96, "M", 192, 192, "M", 384)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class CompactCNN(nn.Module):
    """conv3x3-BN-ReLU stacks with early pooling (cheap at 48x48), global average pool -> last width.

    `stem_stride` = 2 makes the first conv strided (the `compact_s*` models)."""

    def __init__(self, in_chans: int = 1, config: tuple = CONFIG, stem_stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c, first = in_chans, True
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += conv_bn_relu(c, v, stem_stride if first else 1)
            c, first = v, False
        self.features = nn.Sequential(*layers)
        self.feature_dim = c
        self.in_chans = in_chans

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean((2, 3))
