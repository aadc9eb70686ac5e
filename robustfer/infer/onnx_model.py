"""Classify faces with an exported robustfer ONNX file: onnxruntime + numpy + Pillow, no torch, no robustfer.models.

The file written by `robustfer export` (infer/export.py) carries in its `metadata_props` everything needed to
turn uint8 faces into the graph's input: the class names in output order, the input size and channels, and the
normalisation's per-channel mean/std. The graph itself takes float32 N x C x H x W, already normalised.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robustfer.errors import RobustferError

FORMAT = "robustfer-onnx/1"   # metadata schema; bump when the keys or the input contract change
REQUIRED = ("robustfer_format", "classes", "input_size", "channels", "mean", "std")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _resize_float(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of float N x C x H x W to size x size with Pillow's float mode ('F'), which like
    robustfer.augment.resize (torch, antialias when shrinking) widens the filter when it shrinks."""
    from PIL import Image

    n, c = x.shape[:2]
    out = np.empty((n, c, size, size), np.float32)
    for i in range(n):
        for j in range(c):
            out[i, j] = np.asarray(Image.fromarray(x[i, j], mode="F").resize((size, size), Image.BILINEAR))
    return out


def preprocess(faces: np.ndarray, size: int, channels: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 faces N x C x H x W (or N x H x W, grey) -> the graph's float32 input, in robustfer's test-time
    order (augment.test_transform): scale to [0, 1], match the channels (grey repeated, RGB averaged),
    resize to the model's size, then (x - mean) / std per channel. A float array is taken as already in [0, 1]."""
    a = np.asarray(faces)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise RobustferError(f"faces must be an array N x C x H x W or N x H x W, not shape {a.shape}")
    if a.shape[1] not in (1, 3):
        raise RobustferError(f"faces have {a.shape[1]} channels (shape {a.shape}): pass N x C x H x W with C = 1 or 3")
    x = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if x.shape[1] != channels:
        x = np.repeat(x, channels, axis=1) if x.shape[1] == 1 else x.mean(axis=1, keepdims=True, dtype=np.float32)
    if x.shape[-2:] != (size, size):
        x = _resize_float(np.ascontiguousarray(x), size)
    return np.ascontiguousarray((x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1), dtype=np.float32)


def read_metadata(path: str | Path) -> dict:
    """The robustfer metadata of an ONNX file (values decoded), with a clear error for a foreign file."""
    sess = _session(Path(path), threads=1)
    return _decode(sess.get_modelmeta().custom_metadata_map, Path(path))


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise RobustferError(f"ONNX file {path} does not exist: write one with `robustfer export --checkpoint CKPT --out {path.name}`")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 — onnxruntime raises its own exception types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise RobustferError(f"{path} cannot be loaded by onnxruntime ({msg[:200]}): is it an ONNX file "
                             "written by `robustfer export`?") from None


def _decode(meta: dict, path: Path) -> dict:
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise RobustferError(f"{path} has no robustfer metadata ({', '.join(missing)} missing): export the model with "
                             "`robustfer export`, which records the classes and preprocessing the predictor needs")
    if meta["robustfer_format"] != FORMAT:
        raise RobustferError(f"{path} has metadata format {meta['robustfer_format']!r}, this robustfer reads {FORMAT!r}: "
                             "export it again with this robustfer version")
    out = dict(meta)
    out["classes"] = tuple(json.loads(meta["classes"]))
    out["input_size"] = int(meta["input_size"])
    out["channels"] = int(meta["channels"])
    out["mean"] = np.asarray(json.loads(meta["mean"]), np.float32)
    out["std"] = np.asarray(json.loads(meta["std"]), np.float32)
    return out


class OnnxClassifier:
    """An exported robustfer model run by onnxruntime: `predict_probs(uint8 faces) -> N x C probabilities`,
    columns in the order of `.classes`. Needs neither torch nor robustfer's model code."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = _session(self.path, threads)
        self.meta = _decode(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.classes: tuple[str, ...] = self.meta["classes"]
        self.input_size: int = self.meta["input_size"]
        self.channels: int = self.meta["channels"]
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, faces: np.ndarray) -> np.ndarray:
        return preprocess(faces, self.input_size, self.channels, self.meta["mean"], self.meta["std"])

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Raw outputs for already preprocessed float32 input N x C x H x W."""
        outs = [self.session.run(None, {self.input_name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), np.float32)

    def predict_probs(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 faces N x C x H x W or N x H x W (any size; resized to `input_size`) -> N x C softmax probabilities."""
        return softmax(self.logits(self.preprocess(faces), batch_size))

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, {len(self.classes)} classes, {self.channels}x{self.input_size}x{self.input_size})"
