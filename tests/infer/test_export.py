"""`robustfer export --format onnx`: the graph equals PyTorch, has a dynamic batch and robustfer's metadata; the
int8 copy agrees; OnnxClassifier runs it without torch; every error is one line."""
import json
from pathlib import Path
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import robustfer
from robustfer.cli import main
from robustfer.data.classes import CANONICAL
from robustfer.errors import RobustferError
from robustfer.infer.onnx_model import OnnxClassifier
from robustfer.methods import create_method
from robustfer.methods.base import ViewSpec
from robustfer.models import create_backbone, model_defaults
from robustfer.models.predict import predict_logits
from robustfer.train.checkpoint import load_trained, save_atomic

CLASSES = list(CANONICAL["ferplus"])


def make_checkpoint(path, model="compact_s", method="ce", seed=0):
    """A checkpoint as the trainer writes it (the keys load_trained reads), with random weights and BatchNorm
    statistics that are not the identity, so the check compares something."""
    torch.manual_seed(seed)
    size, chans = model_defaults(model)
    net = create_method(method).build(create_backbone(model, chans), len(CLASSES), tuple(CLASSES))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_atomic({"model": net.state_dict(), "config": {"model": model, "method": method, "method_options": {},
                                                      "dataset": "ferplus"},
                 "classes": CLASSES, "spec": asdict(ViewSpec(size, chans, "imagenet", "cpu")),
                 "version": robustfer.__version__}, path)
    return path


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _faces(n, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    d = tmp_path_factory.mktemp("compact")
    ck = make_checkpoint(d / "ck.pt")
    assert main(["export", "--checkpoint", str(ck), "--out", str(d / "m.onnx"), "--batch", "16"]) == 0
    return ck, d / "m.onnx"


def test_export_equals_pytorch_with_a_dynamic_batch(compact, capsys):
    ck, f = compact
    model, spec, classes, _ = load_trained(ck)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, outp.name, inp.type) == ("input", "logits", "tensor(float)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 48, 48]  # symbolic batch axis
    from robustfer.augment import test_transform

    for n in (1, 7, 33):
        u8 = torch.from_numpy(_faces(n, seed=n))
        x = test_transform(u8, 48, 1, "imagenet")
        ref = predict_logits(model, u8, 48, 1, "imagenet").numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == (n, 8) and np.abs(got - ref).max() < 1e-4


def test_metadata_round_trips(compact):
    ck, f = compact
    meta = {p.key: p.value for p in onnx.load(str(f)).metadata_props}
    assert json.loads(meta["classes"]) == CLASSES  # in the output's order
    assert meta["input_size"] == "48" and meta["channels"] == "1" and meta["norm"] == "imagenet"
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3]) and std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert meta["robustfer_version"] == robustfer.__version__ and meta["source_checkpoint"] == str(ck.resolve())
    assert meta["model"] == "compact_s" and meta["method"] == "ce"
    c = OnnxClassifier(f)
    assert c.classes == tuple(CLASSES) and c.input_size == 48 and c.channels == 1


def test_onnx_classifier_matches_pytorch_at_any_size(compact):
    ck, f = compact
    model, *_ = load_trained(ck)
    c = OnnxClassifier(f)
    for size in (48, 96, 37):
        u8 = _faces(10, size, seed=size)
        ref = predict_logits(model, torch.from_numpy(u8), 48, 1, "imagenet").softmax(1).numpy()
        p = c.predict_probs(u8)
        assert p.shape == (10, 8) and np.allclose(p.sum(1), 1, atol=1e-5)
        assert np.abs(p - ref).max() < 1e-4, size                      # Pillow's resize = torch's antialiased bilinear
        assert np.abs(c.predict_probs(u8[:, 0]) - p).max() == 0        # N x H x W grey
        assert np.abs(c.predict_probs(np.repeat(u8, 3, 1)) - p).max() < 1e-5  # RGB is averaged to grey


def test_onnx_classifier_needs_no_torch(compact):
    _, f = compact
    code = ("import sys, json, numpy as np\n"
            "from robustfer.infer.onnx_model import OnnxClassifier\n"
            f"c = OnnxClassifier({str(f)!r})\n"
            "p = c.predict_probs(np.zeros((3, 64, 64), np.uint8))\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'robustfer.models', "
            "'robustfer.train', 'robustfer.methods')))\n"
            "print(json.dumps({'shape': list(p.shape), 'classes': list(c.classes), 'bad': bad}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"shape": [3, 8], "classes": CLASSES, "bad": []}


@pytest.mark.parametrize("model,method", [("vit_s", "ce"), ("compact_s", "ncctfer"), ("compact_s", "poi")])
def test_other_models_and_methods_export_the_test_time_head_only(tmp_path, capsys, model, method):
    ck = make_checkpoint(tmp_path / "ck.pt", model, method, seed=1)
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "m.onnx")]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("check on")][0]
    assert float(line.split("= ")[1].split()[0]) < 1e-4
    names = [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer]
    assert any(n.startswith("fc.") for n in names)
    assert not any("neg" in n or "pin" in n or "conf" in n for n in names)  # NCCTFER's h_n, POI's PIN are not shipped
    model_, spec, *_ = load_trained(ck)
    u8 = _faces(5, seed=2)
    ref = predict_logits(model_, torch.from_numpy(u8), 48, 1, "imagenet").softmax(1).numpy()
    assert np.abs(OnnxClassifier(tmp_path / "m.onnx").predict_probs(u8) - ref).max() < 1e-4


def test_trained_run_folder_ema_and_int8_on_real_faces(tmp_path, capsys, ferplus_root):
    """A real `train` run (EMA weights), exported from its folder; int8 calibrated on FERPlus train images,
    checked on FERPlus test images."""
    run = tmp_path / "run"
    assert main(["train", "--dataset", "ferplus", "--root", str(ferplus_root), "--method", "ce", "--out", str(run),
                 "--epochs", "1", "--limit", "64", "--eval-limit", "32", "--batch-size", "32", "--ema", "0.9",
                 "--quiet"]) == 0
    assert "ema" in torch.load(run / "best.pt", weights_only=False)
    capsys.readouterr()
    f = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(f), "--int8", "--batch", "64", "--calib", "64",
                 "--dataset", "ferplus", "--root", str(ferplus_root)]) == 0
    out = capsys.readouterr().out
    assert "the first 64 ferplus test images" in out and "calibrated on the first 64 ferplus train images" in out
    meta = {p.key: p.value for p in onnx.load(str(f)).metadata_props}
    assert meta["source_checkpoint"].endswith("best.pt")
    q = tmp_path / "m.int8.onnx"
    assert q.is_file() and q.stat().st_size < f.stat().st_size / 2
    qops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "QuantizeLinear" in qops and "DequantizeLinear" in qops
    from robustfer.data import load_dataset

    faces = np.array(load_dataset("ferplus", ferplus_root, "test").images[:64])
    fp32, int8 = OnnxClassifier(f), OnnxClassifier(q)
    assert int8.classes == fp32.classes and "static int8" in int8.meta["quantization"]
    p32, p8 = fp32.predict_probs(faces), int8.predict_probs(faces)
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= 0.8
    model, spec, *_ = load_trained(run / "best.pt")  # the EMA weights
    ref = predict_logits(model, torch.from_numpy(faces), 48, 1, "imagenet").softmax(1).numpy()
    assert np.abs(p32 - ref).max() < 1e-4


def test_dynamic_int8(compact, tmp_path, capsys):
    ck, _ = compact
    f = tmp_path / "d.onnx"
    assert main(["export", "--checkpoint", str(ck), "--out", str(f), "--int8", "--int8-mode", "dynamic"]) == 0
    assert "dynamic int8" in capsys.readouterr().out
    c = OnnxClassifier(tmp_path / "d.int8.onnx")
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(c.path)).graph.node}
    assert (c.predict_probs(_faces(16)).argmax(1) == OnnxClassifier(f).predict_probs(_faces(16)).argmax(1)).mean() >= 0.75


def test_errors_are_one_line(compact, tmp_path, capsys, monkeypatch):
    ck, good = compact
    out = str(tmp_path / "x.onnx")
    assert "does not exist" in _err(capsys, ["export", "--checkpoint", str(tmp_path / "no.pt"), "--out", out])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert "not a robustfer checkpoint" in _err(capsys, ["export", "--checkpoint", str(tmp_path / "foreign.pt"), "--out", out])
    (tmp_path / "text.pt").write_text("hello")
    assert "not a robustfer checkpoint" in _err(capsys, ["export", "--checkpoint", str(tmp_path / "text.pt"), "--out", out])
    assert "has no best.pt or last.pt" in _err(capsys, ["export", "--checkpoint", str(tmp_path), "--out", out])
    assert "unknown export format 'tflite'" in _err(capsys, ["export", "--checkpoint", str(ck), "--format", "tflite",
                                                             "--out", out])
    assert "use one of onnx, pt" in _err(capsys, ["export", "--checkpoint", str(ck), "--format", "tflite", "--out", out])
    assert "does not exist" in _err(capsys, ["export", "--checkpoint", str(ck), "--out", str(tmp_path / "no" / "x.onnx")])
    assert "opset 18 or newer" in _err(capsys, ["export", "--checkpoint", str(ck), "--out", out, "--opset", "17"])
    # a check that fails: one line, and no file left behind
    import robustfer.infer.export as E

    real = E.torch_logits
    monkeypatch.setattr(E, "torch_logits", lambda *a: real(*a) + 1.0)
    assert "differ from PyTorch's by 1" in _err(capsys, ["export", "--checkpoint", str(ck), "--out", out])
    assert not (tmp_path / "x.onnx").exists()
    monkeypatch.undo()

    # ONNX files the predictor cannot use
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 1, 48, 48])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 1, 48, 48])
    plain = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    plain.ir_version = 8
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(RobustferError, match="has no robustfer metadata"):
        OnnxClassifier(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(RobustferError, match="cannot be loaded by onnxruntime"):
        OnnxClassifier(tmp_path / "junk.onnx")
    with pytest.raises(RobustferError, match="does not exist"):
        OnnxClassifier(tmp_path / "missing.onnx")
    for e in ("plain", "junk"):
        with pytest.raises(RobustferError) as info:
            OnnxClassifier(tmp_path / f"{e}.onnx")
        assert "\n" not in str(info.value)
    with pytest.raises(RobustferError, match="channels"):
        OnnxClassifier(good).predict_probs(np.zeros((2, 4, 48, 48), np.uint8))


@pytest.mark.parametrize("half", [False, True])
def test_export_pt_is_a_slim_checkpoint_that_predicts_the_same(tmp_path, capsys, half):
    src = make_checkpoint(tmp_path / "full.pt")
    out = tmp_path / "slim.pt"
    argv = ["export", "--checkpoint", str(src), "--format", "pt", "--out", str(out)] + (["--half"] if half else [])
    assert main(argv) == 0
    assert "argmax agreement" in capsys.readouterr().out
    ck = torch.load(out, weights_only=False)
    assert ck["kind"] == "model" and ck["classes"] == CLASSES and "optimizer" not in ck
    assert {v.dtype for v in ck["model"].values() if v.is_floating_point()} == {torch.float16 if half else torch.float32}
    full, spec, _, _ = load_trained(src)
    slim, spec2, classes, _ = load_trained(out)
    assert spec2 == spec and list(classes) == CLASSES
    assert all(p.dtype == torch.float32 for p in slim.parameters())      # fp16 weights come back as fp32
    x = torch.from_numpy(_faces(16))
    a = predict_logits(full, x, 48, 1, "imagenet").softmax(1)
    b = predict_logits(slim, x, 48, 1, "imagenet").softmax(1)
    if half:
        assert (a - b).abs().max() < 1e-2 and (a - b).abs().max() > 0        # rounded, not copied
        assert out.stat().st_size < 0.6 * Path(src).stat().st_size
    else:
        assert torch.equal(a, b)


def test_export_pt_bad_out_name(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "full.pt")
    assert "name the file F.pt" in _err(capsys, ["export", "--checkpoint", str(ck), "--format", "pt",
                                                  "--out", str(tmp_path / "x.onnx")])
