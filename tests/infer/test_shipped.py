"""The model that ships inside the package (robustfer/weights/MODEL.md): used without --checkpoint, and it still
gives the FERPlus test figures its MODEL.md records."""
import json

import torch

import robustfer
from robustfer.cli import main
from robustfer.data.classes import CANONICAL
from robustfer.infer.predict import SHIPPED_MODEL, default_checkpoint

# `robustfer eval --checkpoint robustfer/weights/ferplus_compact_s.pt --dataset ferplus --root ../shared/data/ferplus`
ACCURACY, MEAN_CLASS = 0.8520879821485495, 0.6092978815920087


def test_the_shipped_file_is_a_slim_fp16_ferplus_checkpoint():
    assert default_checkpoint() == SHIPPED_MODEL and SHIPPED_MODEL.stat().st_size < 6 * 2**20
    ck = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)  # tensors and plain values only
    assert ck["kind"] == "model" and ck["half"] and "optimizer" not in ck
    assert ck["classes"] == list(CANONICAL["ferplus"]) and ck["config"]["model"] == "compact_s"


def test_the_shipped_model_gives_its_recorded_ferplus_test_figures(ferplus_root, capsys):
    assert main(["eval", "--checkpoint", str(SHIPPED_MODEL), "--dataset", "ferplus", "--root", str(ferplus_root),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 3137
    # 1e-3 = 3 of 3,137 images: room for a different BLAS summation order, not for another model
    assert abs(r["accuracy"] - ACCURACY) < 1e-3 and abs(r["mean_class_accuracy"] - MEAN_CLASS) < 5e-3
    assert r["accuracy"] >= 0.85                      # issue 15's target for the shipped model


def test_predict_and_the_api_work_without_a_checkpoint(photo, capsys):
    path, img, _ = photo
    assert main(["predict", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    p = robustfer.Predictor()
    faces = p.predict(img)
    assert len(rows) == len(faces) >= 2
    assert [r["label"] for r in rows] == [f.label for f in faces]
    assert p.classes == tuple(CANONICAL["ferplus"])
