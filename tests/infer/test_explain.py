"""Heat maps (models/cam.py, infer/explain.py, `robustfer explain`, the serve page's heat maps).

A hand-built model whose logit depends only on the left half of the image must get a heat map that is bright
on the left and exactly 0 on the right; Grad-CAM must equal CAM (EAC's maps) for a linear head on a pooled
conv map; every registered model and method's test network gets a map; `explain` on an image without a face
says so in one line and writes nothing."""
import base64
import types

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from robustfer.cli import main
from robustfer.infer.explain import explain, heat_maps, overlay
from robustfer.infer.predict import Predictor
from robustfer.models import MODELS, create_model
from robustfer.models.cam import class_activation_maps, grad_cam, normalise_maps


class LeftBackbone(nn.Module):
    """Sees only the left half: the input's right half is zeroed, then bias-free 1x1 convs + ReLU (no spatial
    mixing), so the map's right half is exactly 0 and its left half positive."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.conv[0].weight.copy_(torch.tensor([1.0, 0.5, -1.0, 2.0]).view(4, 1, 1, 1))
            self.conv[2].weight.copy_(torch.eye(4).view(4, 4, 1, 1) + 0.1)
        self.feature_dim, self.in_chans = 4, 1

    def forward_map(self, x):
        mask = torch.zeros_like(x)
        mask[..., : x.shape[-1] // 2] = 1
        return self.conv(x * mask)

    def forward(self, x):
        return self.forward_map(x).mean((2, 3))


class LeftNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = LeftBackbone()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.backbone(x))


def _left_predictor():
    """A Predictor-shaped object around LeftNet (what heat_maps / explain read), taking images whole."""
    return types.SimpleNamespace(_model=LeftNet().eval(), size=16, channels=1, norm="half", classes=("left", "other"),
                                 detector=None, level=True, no_detect=True)


def test_heat_map_of_a_left_half_model_is_bright_on_the_left():
    model = LeftNet().eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1
    y = x.clone()
    y[..., 8:] = torch.rand(4, 1, 16, 8)
    assert torch.equal(model(x), model(y))                         # the logit depends on the left half only
    logits, maps = grad_cam(model, x, torch.zeros(4, dtype=torch.long))
    assert maps.shape == (4, 16, 16)
    assert (maps[..., 8:] == 0).all() and (maps[..., :8] > 0).all()
    m = normalise_maps(maps, 48)
    assert m.max() == 1 and m[..., :20].mean() > 0.2 and (m[..., 28:] == 0).all()
    # the same through explain (image taken whole, resized, normalised) and the drawn overlay: redder on the left
    img = np.full((16, 16, 3), 200, np.uint8)
    pred = _left_predictor()
    found = explain(pred, img, given="other")
    assert len(found) == 1 and found[0].face.label == "left" and list(found[0].maps) == ["left", "other"]
    heat = found[0].maps["left"]
    assert heat.shape == (16, 16) and heat[:, :7].min() > 0.5 and heat[:, 9:].max() == 0
    drawn = overlay(found[0].crop, heat).astype(int)
    red_minus_blue = drawn[..., 0] - drawn[..., 2]
    assert red_minus_blue[:, :20].mean() > red_minus_blue[:, 44:].mean() + 50
    assert "forward_map" not in vars(pred._model.backbone)            # the capture is undone


def test_grad_cam_is_cam_for_a_linear_head_on_the_pooled_map():
    """Grad-CAM of a GAP + linear network = ReLU(CAM) / (h w): one picture for EAC's loss and for explain."""
    from robustfer.methods.eac import EACNet
    from robustfer.models import create_backbone

    torch.manual_seed(0)
    net = EACNet(create_backbone("compact_s"), 8).eval()
    x = torch.randn(5, 1, 48, 48)
    target = torch.tensor([0, 3, 7, 1, 1])
    logits, maps = grad_cam(net, x, target)
    z, cams = net.cam_logits(x)
    hw = cams.shape[-1] * cams.shape[-2]
    torch.testing.assert_close(logits, z.detach())
    torch.testing.assert_close(maps, torch.relu(cams.detach()[torch.arange(5), target]) / hw, atol=1e-7, rtol=1e-5)
    fmap = net.backbone.forward_map(x)
    torch.testing.assert_close(cams, class_activation_maps(fmap, net.fc.weight.detach()))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_gets_a_heat_map(name):
    torch.manual_seed(0)
    model = create_model(name, 8).eval()
    size = MODELS[name].size
    x = torch.randn(2, MODELS[name].chans, size, size)
    logits, maps = grad_cam(model, x)
    assert logits.shape == (2, 8) and maps.dim() == 3 and len(maps) == 2
    assert torch.isfinite(maps).all() and (maps >= 0).all() and maps.sum() > 0
    torch.testing.assert_close(logits, model(x))


@pytest.mark.parametrize("method", ["ce", "ncctfer", "scn", "rul", "eac", "nla", "dnfer"])
def test_every_methods_test_network_gets_a_heat_map(method):
    from robustfer.methods import ViewSpec, create_method
    from robustfer.models import create_backbone

    torch.manual_seed(0)
    classes = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
    m = create_method(method, "ferplus")
    net = m.test_network(m.build(create_backbone("compact_s"), 8, classes,
                                 ViewSpec(size=48, channels=1, norm="imagenet", recipe="official"))).eval()
    logits, maps = grad_cam(net, torch.randn(2, 1, 48, 48))
    assert logits.shape == (2, 8) and maps.shape == (2, 3, 3) and torch.isfinite(maps).all()


def test_explain_on_an_image_without_a_face_says_so_in_one_line(model, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(model), str(blank), "--out", str(out)]) == 0   # as predict: processed
    cap = capsys.readouterr()
    assert cap.out == f"{blank}: no face found\n" and cap.err == ""
    assert not out.exists() or not any(out.rglob("*"))


def test_explain_writes_one_png_per_image_with_a_row_per_face(model, photo, tmp_path, capsys):
    path, img, _ = photo
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(model), str(path), "--out", str(out), "--given", "anger"]) == 0
    lines = capsys.readouterr().out.splitlines()
    faces = Predictor(checkpoint=model).predict(img)
    assert len(lines) == len(faces) >= 2
    for line, f in zip(lines, faces):
        assert f"-> {f.label} " in line and "given anger" in line and "group.png.cam.png" in line
    png = cv2.imread(str(out / "group.png.cam.png"))
    tile = 48 * 4
    assert png is not None and png.shape[0] == len(faces) * (tile + 22 + 4)
    assert png.shape[1] >= 2 * (tile + 4) and png.std() > 20
    assert main(["explain", "--checkpoint", str(model), str(path), "--out", str(out), "--given", "nope"]) == 2


def test_heat_maps_probabilities_are_predicts(model, photo):
    from robustfer.infer.faces import find_faces

    _, img, _ = photo
    p = Predictor(checkpoint=model)
    crops = find_faces(img, p.detector, p.size, p.channels).images
    probs, maps = heat_maps(p, crops)
    np.testing.assert_allclose(probs, p.classify(crops), atol=1e-5)
    assert [next(iter(m)) for m in maps] == [p.classes[i] for i in probs.argmax(1)]


def test_serve_page_shows_the_heat_map_beside_the_probabilities(model, photo):
    from robustfer.infer.serve import analyse

    _, img, _ = photo
    p = Predictor(checkpoint=model)
    _, page = analyse(p, img)
    blocks = page.split('class="rf-face"')[1:]
    assert len(blocks) == len(p.predict(img)) >= 2
    for b in blocks:                                    # in each face's block: the heat map, then its bars
        assert b.count('class="rf-cam"') == 1 and b.index('class="rf-cam"') < b.index('class="rf-row"')
        uri = b.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
        heat = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_COLOR)
        assert heat.shape == (96, 96, 3) and heat.std() > 10
