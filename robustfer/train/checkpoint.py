"""Atomic checkpoint files: write to a temp file in the same folder, then rename over the old one."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from robustfer.errors import RobustferError


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to `path` so that a kill at any moment leaves either the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path) -> dict:
    """Read a robustfer checkpoint, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise RobustferError(f"checkpoint {path} does not exist: pass a last.pt or best.pt from a train run folder")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise RobustferError(f"checkpoint {path} cannot be read ({e.__class__.__name__}): it is not a robustfer checkpoint or is damaged") from None
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise RobustferError(f"checkpoint {path} is not a robustfer checkpoint (no model/config): use a file written by `robustfer train`")
    return ck


def load_trained(path: Path, device: str = "cpu"):
    """(test-time model in eval mode, ViewSpec dict, class names, config dict) from a train checkpoint."""
    from robustfer.methods import ViewSpec, create_method
    from robustfer.models import create_backbone

    ck = load_checkpoint(path)
    if ck.get("kind") == "pretrain":
        raise RobustferError(f"{path} is a label-free pre-training checkpoint (a backbone, no classifier): "
                             f"train from it with `robustfer train --init {path}`")
    cfg = ck["config"]
    method = create_method(cfg["method"], cfg.get("dataset"), **cfg.get("method_options", {}))
    spec = ck["spec"]
    classes = tuple(ck["classes"])
    full = method.build(create_backbone(cfg["model"], spec["channels"]), len(classes), classes, ViewSpec(**spec))
    model = method.test_network(full)  # what runs at test time (POI: its TRN, without the prior network)
    target = model if ck.get("test_network") else full  # a slim export holds the test-time part only
    if "ema" in ck:  # --ema: the averaged weights are the trained model (AveragedModel keys: module.*)
        target.load_state_dict({k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")})
    else:
        target.load_state_dict(ck["model"])
    return model.to(device).eval(), spec, classes, cfg
