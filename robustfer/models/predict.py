"""Batched test-time forward passes."""
from __future__ import annotations

import torch
import torch.nn as nn

from robustfer.augment import test_transform


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, size: int, channels: int, norm: str,
                   batch_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """Logits (float32, on the images' device) of the test-time network for a uint8 image tensor."""
    was_training = model.training
    model.eval()
    out = []
    dev = images.device
    for i in range(0, len(images), batch_size):
        x = test_transform(images[i:i + batch_size], size, channels, norm).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
