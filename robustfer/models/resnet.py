"""torchvision ResNets as backbones (random init; user weights through --init)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its fc: same parameter names, so face-pretrained checkpoints load."""

    def __init__(self, arch: str = "resnet18", in_chans: int = 3):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features
        self.in_chans = in_chans

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean((2, 3))
