"""Reading checkpoint files safely (read_weights: weights_only=True; check_format), and loading a user's
pretrained weights (`--init`) into a backbone.

Accepts a plain state_dict, a dict holding it under `state_dict` / `model` (the face-pretrained
ResNet-18 files the FER papers use keep it under `state_dict` with `module.` prefixes), a robustfer
checkpoint (a `pretrain` run's last.pt keeps the bare backbone under `model`), or a run folder (its
last.pt). Keys of a classifier (`fc.*`) that do not fit are skipped and reported; any other missing,
unexpected or mis-shaped key is an error naming the checkpoint. Only the backbone is loaded, never a classifier,
so the checkpoint's class list does not matter. The file is read with weights_only=True
(read_weights): tensors and plain values only, no code from the file ever runs.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

import robustfer
from robustfer.errors import RobustferError

HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.")

# The checkpoint layout this code writes, and the newest it reads. 0: files from before the number was stored
# (same layout as 1). Raise it when a change makes older code misread new files; older files stay readable.
FORMAT = 1


def stamp() -> dict:
    """The fields every checkpoint carries: the writing robustfer's version and the checkpoint format."""
    return {"version": robustfer.__version__, "format": FORMAT}


def read_weights(path: Path, what: str = "checkpoint",
                 unreadable: str = "cannot be read ({err}): it is not a PyTorch checkpoint or is damaged"):
    """torch.load(weights_only=True) with one clear line for a file that asks the unpickler for anything but
    tensors and plain values (code, classes: never executed), or (`unreadable`, {err} = the exception's class)
    that is not a PyTorch checkpoint or is damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(e))
        if wanted is None:  # e.g. a pickle opcode the weights-only unpickler does not know
            raise RobustferError(f"{what} {path} {unreadable.format(err='UnpicklingError')}") from None
        raise RobustferError(f"{what} {path} asks to build or call {wanted.group(1)} while loading: robustfer loads "
                             "checkpoints with weights_only=True (tensors and plain values) and never runs code from a "
                             "file; if you trust the file, save its tensors alone, e.g. torch.save(torch.load(F, "
                             "weights_only=False)['state_dict'], 'weights.pt')") from None
    except Exception as e:  # noqa: BLE001 - truncated, empty, not a zip or pickle
        raise RobustferError(f"{what} {path} {unreadable.format(err=e.__class__.__name__)}") from None


def check_format(ck: dict, path: Path) -> None:
    """Refuse a checkpoint of a newer format than this code reads (a newer robustfer wrote it)."""
    fmt = ck.get("format", 0)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
        raise RobustferError(f"checkpoint {path} was written by robustfer {ck.get('version', '?')} in checkpoint format "
                             f"{fmt!r}; this robustfer {robustfer.__version__} reads formats up to {FORMAT}: upgrade "
                             "robustfer to use it")


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
    obj = read_weights(path, "--init checkpoint", "is not a readable PyTorch state_dict ({err})")
    if isinstance(obj, dict) and "version" in obj and "model" in obj:  # a robustfer checkpoint
        check_format(obj, path)
    try:
        sd = _state_dict_of(obj)
    except ValueError as e:
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
