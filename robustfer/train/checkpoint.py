"""Checkpoint files: written atomically (a temp file in the same folder, renamed over the old one), stamped
with robustfer's version and a format number (stamp), and read with torch.load(weights_only=True)
(models.checkpoint.read_weights), so that loading never runs code from a file: a robustfer checkpoint holds
tensors and plain values only (dicts, lists, str, numbers, bool, None)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

import robustfer
from robustfer.errors import RobustferError
from robustfer.models.checkpoint import FORMAT, check_format, read_weights, stamp  # noqa: F401 - the file level


def plain(obj):
    """A copy of config / history values as plain JSON types (what weights_only loading accepts): Paths as
    strings, numpy scalars and arrays as numbers and lists; the values metrics.jsonl and config.json hold."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    return json.loads(json.dumps(obj, default=default))


def check_classes(saved, data_classes, path: Path, fix: str) -> None:
    """Refuse a checkpoint whose class list (names, in order: the classifier's columns) is not the data set's."""
    if list(saved) != list(data_classes):
        raise RobustferError(f"checkpoint {path} was trained on the classes {list(saved)}, the data set has "
                             f"{list(data_classes)}: {fix}")


def restore_checked(restore, ck: dict, path: Path) -> None:
    """restore(ck) (a run's restore method) with one line instead of a traceback when the checkpoint's contents
    do not fit the run: keys or shapes of another model, method or robustfer version."""
    try:
        restore(ck)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise RobustferError(f"{path} (robustfer {ck.get('version', '?')}) does not fit the run it continues "
                             f"({e.__class__.__name__} {msg}): resume only with the last.pt that run wrote, or start "
                             "a new run in another --out") from None


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to `path` so that a kill at any moment leaves either the old or the new file. A kill
    between the two steps leaves the temp file behind (a checkpoint's size each time): those of processes
    that no longer run are removed here (tests/reliability/test_kill_resume.py)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    remove_stale_temps(path.parent)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, text: str) -> None:
    """Path.write_text that a kill cannot leave half-written (a temp file renamed over `path`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(folder: Path) -> None:
    """Delete the `.NAME.tmpPID` files in `folder` whose writer PID is gone (killed mid-write)."""
    for p in Path(folder).glob(".*.tmp*"):
        pid = p.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            p.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def load_checkpoint(path: Path) -> dict:
    """Read a robustfer checkpoint, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise RobustferError(f"checkpoint {path} does not exist: pass a last.pt or best.pt from a train run folder")
    ck = read_weights(path, "checkpoint", "cannot be read ({err}): it is not a robustfer checkpoint or is damaged")
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise RobustferError(f"checkpoint {path} is not a robustfer checkpoint (no model/config): use a file written by `robustfer train`")
    check_format(ck, path)
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
    try:
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
    except RobustferError:
        raise
    except Exception as e:  # noqa: BLE001 - weights of another shape, another version's keys or options
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise RobustferError(f"checkpoint {path} (robustfer {ck.get('version', '?')}) does not fit this robustfer "
                             f"{robustfer.__version__}'s {cfg.get('model')} / {cfg.get('method')} ({msg}): use a "
                             "checkpoint written by this version's `robustfer train`") from None
    return model.to(device).eval(), spec, classes, cfg
