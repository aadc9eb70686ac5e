"""Loading a user's pretrained weights (`--init`) into a backbone.

Accepts a plain state_dict, a dict holding it under `state_dict` / `model` (the face-pretrained
ResNet-18 files the FER papers use keep it under `state_dict` with `module.` prefixes), a robustfer
checkpoint (a `pretrain` run's last.pt keeps the bare backbone under `model`), or a run folder (its
last.pt). Keys of a classifier (`fc.*`) that do not fit are skipped and reported; any other missing,
unexpected or mis-shaped key is an error naming the checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from robustfer.errors import RobustferError

HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.")


def _state_dict_of(obj) -> dict:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("no state_dict of tensors found")
    return obj


def load_init(backbone: nn.Module, path: str | Path) -> list[str]:
    """Copy weights from checkpoint `path` into `backbone`; return the skipped head keys."""
    path = Path(path)
    if path.is_dir() and (path / "last.pt").is_file():  # a run folder (`robustfer pretrain` or `train`)
        path = path / "last.pt"
    if not path.is_file():
        raise RobustferError(f"--init checkpoint {path} does not exist: pass the path of a .pth/.pt file or a run folder")
    try:
        sd = _state_dict_of(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise RobustferError(f"--init checkpoint {path} is not a readable PyTorch state_dict ({e})") from None
    cleaned = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        cleaned[k] = v
    target = backbone.state_dict()
    skipped = sorted(k for k in cleaned if k.startswith(HEAD_PREFIXES) and k not in target)
    cleaned = {k: v for k, v in cleaned.items() if k not in skipped}
    # BatchNorm counters are not weights; older checkpoints lack them.
    missing = sorted(k for k in set(target) - set(cleaned) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(cleaned) - set(target))
    shape = sorted(k for k in set(target) & set(cleaned) if target[k].shape != cleaned[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: {tuple(cleaned[k].shape)} vs {tuple(target[k].shape)}")
        raise RobustferError(f"--init checkpoint {path} does not fit this model: {'; '.join(parts)}; "
                             "pass weights of the same architecture (--model)")
    backbone.load_state_dict(cleaned, strict=False)  # completeness was checked above
    return skipped
