"""`robustfer export`: the test-time network of a train checkpoint as an ONNX file (`--format onnx`), or as a
slim PyTorch checkpoint (`--format pt`: weights + what `load_trained` needs, no optimiser or RNG state; fp16
weights with `--half`), the form the shipped model takes (robustfer/models/weights/).

The graph is what `train.checkpoint.load_trained` gives (the EMA weights when the run kept them; a method's
extra training heads, e.g. NCCTFER's h_n, are not reached by `forward` and so are not in it). Contract:
input `input` float32 N x C x H x W, already resized and normalised (onnx_model.preprocess), dynamic N;
output `logits` float32 N x num_classes. The file's metadata_props carry the classes and the preprocessing
(onnx_model.FORMAT), so onnx_model.OnnxClassifier runs it without torch.

Exporter: torch.onnx.export(dynamo=True) (torch.export + onnxscript), the supported path since torch 2.9;
the TorchScript exporter (dynamo=False) is deprecated there and warns that it will be removed.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import robustfer
from robustfer.errors import RobustferError
from robustfer.infer.onnx_model import FORMAT, OnnxClassifier, softmax

FORMATS = ("onnx", "pt")
MIN_OPSET = 18   # torch.onnx's dynamo exporter converts from opset 18 upwards; lower requests come back as 18
TOLERANCE = 1e-3


def resolve_checkpoint(path: str | Path) -> Path:
    """A .pt file as given; a run folder -> its best.pt (the epoch selected on the validation split), else last.pt."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise RobustferError(f"run folder {p} has no best.pt or last.pt: pass a checkpoint written by `robustfer train`")
    return p


def norm_stats(norm: str, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std that augment.normalize applies (grey: the mean of the three channels' values)."""
    from robustfer.augment import NORMS

    mean, std = (np.asarray(v, np.float64) for v in NORMS[norm])
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    return [float(v) for v in mean], [float(v) for v in std]


def metadata(spec: dict, classes, cfg: dict, source: Path, extra: dict | None = None) -> dict[str, str]:
    """The metadata_props robustfer writes (all values strings; lists and dicts as JSON)."""
    mean, std = norm_stats(spec["norm"], spec["channels"])
    m = {
        "robustfer_format": FORMAT,
        "robustfer_version": robustfer.__version__,
        "classes": json.dumps(list(classes)),
        "input_size": str(spec["size"]),
        "channels": str(spec["channels"]),
        "norm": spec["norm"],
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "input": "float32 N x C x H x W: uint8 / 255, channels matched (grey repeated, RGB averaged), bilinear "
                 "resize to input_size (antialiased when shrinking), then (x - mean) / std per channel",
        "output": "logits N x len(classes); softmax gives the probabilities",
        "model": str(cfg.get("model", "")),
        "method": str(cfg.get("method", "")),
        "dataset": str(cfg.get("dataset", "")),
        "source_checkpoint": str(source),
    }
    m.update({k: str(v) for k, v in (extra or {}).items()})
    return m


def set_metadata(model_proto, meta: dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for k, v in meta.items():
        p = model_proto.metadata_props.add()
        p.key, p.value = k, v


def random_faces(spec: dict, n: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images N x C x size x size (low-resolution noise upsampled, plus a little pixel
    noise): not faces, but with a face crop's range of values and smoothness, for checks and calibration."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, spec["channels"], 6, 6, generator=g)
    x = F.interpolate(low, size=(spec["size"],) * 2, mode="bicubic", align_corners=False)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def data_images(dataset: str | None, root: str | None, split: str, n: int, **data_kw) -> tuple[np.ndarray, str] | None:
    """The first n uint8 images of split `split` of --dataset/--root (None when no data set is given)."""
    if not dataset:
        return None
    if not root:
        raise RobustferError("--dataset needs --root, the data set's folder")
    from robustfer.data import load_dataset

    d = load_dataset(dataset, root, split, **data_kw)
    return np.array(d.images[:n]), f"the first {min(n, len(d))} {dataset} {split} images"


def _checked_out(out: str | Path, suffix: str) -> Path:
    """--out as a Path, refused with one line unless it is F<suffix> in an existing folder."""
    out = Path(out)
    if out.suffix != suffix:
        raise RobustferError(f"--out {out}: name the file F{suffix}")
    if not out.parent.is_dir():
        raise RobustferError(f"--out {out}: folder {out.parent} does not exist")
    return out


def check_images(spec: dict, n: int, dataset: str | None, root: str | None, **data_kw) -> tuple[np.ndarray, str]:
    """The images an export is checked on, and their description: the first `n` test images of
    `dataset`/`root`, else `n` random smooth ones."""
    return data_images(dataset, root, "test", n, **data_kw) or (random_faces(spec, n), f"{n} random smooth images")


def torch_logits(model, images: np.ndarray, spec: dict) -> np.ndarray:
    """PyTorch's logits, through the same preprocessing as robustfer.models.predict (test_transform)."""
    from robustfer.models.predict import predict_logits
    import torch

    return predict_logits(model, torch.from_numpy(images), spec["size"], spec["channels"], spec["norm"]).numpy()


def _export_graph(model, spec: dict, opset: int | None):
    """torch.onnx.export with a dynamic batch axis -> onnx ModelProto (weights inside)."""
    import torch

    x = torch.zeros(2, spec["channels"], spec["size"], spec["size"])  # batch 2: torch.export specialises 1
    kw = {} if opset is None else {"opset_version": opset}
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                _quiet_logging(), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, (x,), None, dynamo=True, input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
                                     external_data=False, **kw)
    except Exception as e:  # noqa: BLE001 — exporter errors are long; one line with the cause
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise RobustferError(f"torch.onnx.export failed for this model ({e.__class__.__name__}: {first[:200]})"
                             + (f"; try another --opset than {opset}" if opset else "")) from None
    return prog.model_proto


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _save(model_proto, path: Path) -> None:
    import onnx

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        onnx.save(model_proto, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


INT8_MODES = ("static", "dynamic")


def quantize_int8(src: Path, dst: Path, meta: dict[str, str], mode: str = "static",
                  calib: np.ndarray | None = None, calib_what: str = "") -> None:
    """int8 copy of `src` with onnxruntime.quantization, after its quant_pre_process (shape inference, fusions).

    static (default): QDQ format, per-channel QInt8 weights, QInt8 activations with ranges from `calib` (the
    graph's float input, MinMax); Conv becomes an int8 kernel. dynamic: quantize_dynamic, QInt8 weights,
    activations quantised per batch at run time; turns Conv into ConvInteger, which onnxruntime's CPU runs
    slower than the fp32 Conv (measured: 0.4x on compact_s), while MatMul-heavy ViTs gain (1.8x on vit_s)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in INT8_MODES:
        raise RobustferError(f"unknown int8 mode {mode!r}: use one of {', '.join(INT8_MODES)}")
    tmp_pre = dst.with_name(f".{dst.name}.pre{os.getpid()}.onnx")
    tmp_q = dst.with_name(f".{dst.name}.q{os.getpid()}.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.it, None)

    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                _quiet_logging():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(tmp_pre), skip_symbolic_shape=True)
            if mode == "static":
                quantize_static(str(tmp_pre), str(tmp_q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
                how = f"static int8 (onnxruntime quantize_static, QDQ, per-channel QInt8 weights, QInt8 activations; calibrated on {calib_what})"
            else:
                quantize_dynamic(str(tmp_pre), str(tmp_q), weight_type=QuantType.QInt8)
                how = "dynamic int8 (onnxruntime quantize_dynamic, QInt8 weights, activations quantised per batch)"
        q = onnx.load(str(tmp_q))
        set_metadata(q, {**meta, "quantization": how})
        _save(q, dst)
    except RobustferError:
        raise
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise RobustferError(f"int8 quantisation of {src} failed ({e.__class__.__name__}: {first[:200]}); "
                             f"try --int8-mode {'dynamic' if mode == 'static' else 'static'}") from None
    finally:
        for t in (tmp_pre, tmp_q, Path(str(tmp_pre) + ".data"), Path(str(tmp_q) + ".data")):
            if t.exists():
                t.unlink()


@contextlib.contextmanager
def _quiet_logging():
    import logging

    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(prev)


@dataclass
class ExportReport:
    out: Path
    checkpoint: Path
    opset: int
    classes: tuple
    input_shape: tuple                 # (C, H, W) of the graph's input; N is dynamic
    check_on: str
    n: int
    max_abs_diff: float                # |logits onnxruntime - logits PyTorch| on the same float input: the graph alone
    max_prob_diff: float               # |OnnxClassifier probabilities (numpy preprocessing from the metadata) - PyTorch's|
    argmax_agreement: float
    tolerance: float
    int8: dict = field(default_factory=dict)   # out, mode, calibration, max_abs_diff / argmax_agreement vs fp32 ONNX


def export_onnx(checkpoint: str | Path, out: str | Path, fmt: str = "onnx", opset: int | None = None,
                int8: bool = False, int8_mode: str = "static", batch: int = 8, calib: int = 256,
                tolerance: float = TOLERANCE, dataset: str | None = None, root: str | None = None,
                **data_kw) -> ExportReport:
    """Export `checkpoint`'s test-time network to `out` and check onnxruntime against PyTorch on `batch`
    images (the first test images of `dataset`/`root`, else random smooth ones); above `tolerance` (max abs
    logit difference) it fails and leaves no file. `int8`: also `out`.int8.onnx (quantize_int8), static
    quantisation calibrated on the first `calib` training images (random smooth images without a data set)."""
    if fmt not in FORMATS:
        raise RobustferError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if int8_mode not in INT8_MODES:
        raise RobustferError(f"unknown int8 mode {int8_mode!r}: use one of {', '.join(INT8_MODES)}")
    if batch < 1 or calib < 1:
        raise RobustferError(f"--batch {batch} / --calib {calib}: the check and the calibration need at least one image")
    out = _checked_out(out, ".onnx")
    import onnx

    from robustfer.train.checkpoint import load_trained

    ckpt = resolve_checkpoint(checkpoint)
    model, spec, classes, cfg = load_trained(ckpt)
    model = model.float().eval()
    images, what = check_images(spec, batch, dataset, root, **data_kw)  # before the export: a data error costs nothing

    if opset is not None and opset < MIN_OPSET:
        raise RobustferError(f"--opset {opset}: torch {_torch_version()}'s dynamo exporter writes opset {MIN_OPSET} or "
                             f"newer (onnxruntime 1.14+ runs it); use --opset {MIN_OPSET} or above, or leave the default")
    proto = _export_graph(model, spec, opset)
    meta = metadata(spec, classes, cfg, ckpt.resolve())
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    used_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)
    if opset is not None and used_opset != opset:
        raise RobustferError(f"--opset {opset}: the exporter wrote opset {used_opset} instead; leave --opset at the "
                             "default or pick one the exporter supports")
    _save(proto, out)

    ref = torch_logits(model, images, spec)
    x = _torch_preprocessed(images, spec)
    try:
        clf = OnnxClassifier(out)
        got = clf.logits(x)
        diff = float(np.abs(got - ref).max())
        if not diff <= tolerance:  # also catches NaN
            raise RobustferError(f"onnxruntime's logits differ from PyTorch's by {diff:.3g} (> tolerance {tolerance:g}) "
                                 f"on {what}: the export of {ckpt} is wrong, no file written (loosen with --tolerance)")
        prob_diff = float(np.abs(clf.predict_probs(images) - softmax(ref)).max())
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    rep = ExportReport(out, ckpt, used_opset, tuple(classes), (spec["channels"], spec["size"], spec["size"]), what,
                       len(images), diff, prob_diff, float((got.argmax(1) == ref.argmax(1)).mean()), tolerance)
    if int8:
        q_out = out.with_name(out.name[:-len(".onnx")] + ".int8.onnx")
        cal = None
        if int8_mode == "static":
            got_cal = data_images(dataset, root, "train", calib, **data_kw)
            cal_imgs, cal_what = got_cal or (random_faces(spec, calib, seed=1), f"{calib} random smooth images")
            cal = _torch_preprocessed(cal_imgs, spec)
        quantize_int8(out, q_out, meta, int8_mode, cal, cal_what if cal is not None else "")
        q = OnnxClassifier(q_out).logits(x)
        rep.int8 = {"out": q_out, "mode": int8_mode, "calibration": cal_what if cal is not None else None,
                    "max_abs_diff": float(np.abs(q - got).max()),
                    "argmax_agreement": float((q.argmax(1) == got.argmax(1)).mean()),
                    "size_mb": q_out.stat().st_size / 2**20, "fp32_size_mb": out.stat().st_size / 2**20}
    return rep


@dataclass
class SlimReport:
    out: Path
    checkpoint: Path
    half: bool
    size_mb: float
    check_on: str
    max_prob_diff: float      # slim vs the full checkpoint, softmax probabilities on the check batch
    argmax_agreement: float


def export_slim(checkpoint: str | Path, out: str | Path, half: bool = False, batch: int = 8,
                dataset: str | None = None, root: str | None = None, **data_kw) -> SlimReport:
    """A test-time checkpoint: the (EMA when kept) weights, config, spec and classes, fp16 with `half` (floating
    tensors only; `load_trained` copies them back into the fp32 model). Checked against the full checkpoint on
    `batch` images (the first test images of `dataset`/`root`, else random smooth ones); written atomically."""
    from robustfer.train.checkpoint import FORMAT, load_checkpoint, load_trained, save_atomic

    out = _checked_out(out, ".pt")
    ckpt = resolve_checkpoint(checkpoint)
    model, spec, classes, cfg = load_trained(ckpt)
    src = load_checkpoint(ckpt)
    images, what = check_images(spec, batch, dataset, root, **data_kw)
    state = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    slim = {"kind": "model", "model": state, "config": cfg, "spec": spec, "classes": list(classes),
            "version": src.get("version", robustfer.__version__), "format": FORMAT, "source": str(ckpt), "half": half,
            "test_network": True,
            "epoch": src.get("epoch")}
    save_atomic(slim, out)
    ref = softmax(torch_logits(model, images, spec))
    model2, *_ = load_trained(out)
    got = softmax(torch_logits(model2, images, spec))
    return SlimReport(out, ckpt, half, out.stat().st_size / 2**20, what, float(np.abs(got - ref).max()),
                      float((got.argmax(1) == ref.argmax(1)).mean()))


def _torch_preprocessed(images: np.ndarray, spec: dict) -> np.ndarray:
    """The graph's input built by PyTorch's own preprocessing (so the graph is compared alone)."""
    import torch

    from robustfer.augment import test_transform

    return test_transform(torch.from_numpy(images), spec["size"], spec["channels"], spec["norm"]).contiguous().numpy()
