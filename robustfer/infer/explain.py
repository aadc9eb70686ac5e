"""Heat maps of where the model looks: `robustfer explain` and the `serve` page's heat maps.

    from robustfer.infer.explain import explain
    for e in explain(Predictor(checkpoint="runs/x/best.pt"), "photo.jpg", given="happiness"):
        e.face.label, e.face.probs, e.maps["happiness"]       # predict's Face, {class: S x S map in [0, 1]}

Each face is found, cropped and levelled exactly as `predict` does (infer.faces.find_faces with the
Predictor's detector, size and channels), classified by the PyTorch model, and given a Grad-CAM map
(models/cam.py: CAM for the CNNs' linear heads, Grad-CAM on the conv map or, for ViTs, on the patch-token
map) of its predicted class and, on request, of another class (`given`: e.g. the image's training label).
Maps come from the last conv map (coarse: 3 x 3 for the compact CNNs at 48 px, 8 x 8 tokens for the ViTs), bilinearly
upsampled and scaled to [0, 1] per map; `overlay` draws one on the crop with OpenCV's JET colours.
A face the detector does not find gets no map: `explain` says "no face found" in one line, as predict does.
"""
from __future__ import annotations

import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustfer.errors import RobustferError
from robustfer.infer.predict import IMAGE_EXTS, Face, Predictor, check_detector, collect_inputs, read_image

SCALE = 4        # a 48 px crop is drawn at 192 px
ALPHA = 0.45     # weight of the heat map's colours over the face


@dataclass
class Explained:
    """One face: predict's Face (box, label, probs), its crop (uint8 C x S x S, the model's input) and heat maps
    {class name: float32 S x S in [0, 1]}, the predicted class's first."""

    face: Face
    crop: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def heat_maps(predictor: Predictor, crops: np.ndarray, classes: list[str | None] | None = None):
    """(probs N x K, [{class: map}] per crop) for uint8 crops N x C x S x S: the predicted class's Grad-CAM and,
    where classes[i] names another class, that class's too."""
    import torch

    from robustfer.augment import test_transform
    from robustfer.models.cam import grad_cam, normalise_maps

    model = getattr(predictor, "_model", None)
    if model is None:
        raise RobustferError("heat maps need a PyTorch checkpoint (--checkpoint), not an ONNX model")
    model.eval()
    dev = next(model.parameters()).device
    x = test_transform(torch.from_numpy(np.ascontiguousarray(crops)).to(dev), predictor.size, predictor.channels,
                       predictor.norm)
    logits, pred_maps = grad_cam(model, x)
    probs = torch.softmax(logits, 1).cpu().numpy()
    pred_maps = normalise_maps(pred_maps, crops.shape[-1]).cpu().numpy()
    out = [{predictor.classes[int(p.argmax())]: m} for p, m in zip(probs, pred_maps)]
    for i, c in enumerate(classes or []):
        if c is None or c in out[i]:
            continue
        _, m = grad_cam(model, x[i:i + 1], torch.tensor([predictor.classes.index(c)]))
        out[i][c] = normalise_maps(m, crops.shape[-1])[0].cpu().numpy()
    return probs, out


def explain(predictor: Predictor, image: np.ndarray | str | Path, given: str | None = None) -> list[Explained]:
    """The faces of one image (path or uint8 RGB array) with their heat maps; [] when no face is found."""
    from robustfer.infer.faces import find_faces

    if given is not None and given not in predictor.classes:
        raise RobustferError(f"--given {given!r} is not a class of this model ({', '.join(predictor.classes)})")
    rgb = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image)
    found = find_faces(rgb, predictor.detector, predictor.size, predictor.channels, level=predictor.level,
                       no_detect=predictor.no_detect)
    if not len(found):
        return []
    probs, maps = heat_maps(predictor, found.images, [given] * len(found))
    out = []
    for d, crop, p, m in zip(found.detections, found.images, probs, maps):
        label = predictor.classes[int(p.argmax())]
        face = Face(tuple(int(v) for v in d.box), label, {c: float(v) for c, v in zip(predictor.classes, p)},
                    None if d.landmarks is None else np.round(d.landmarks, 1).tolist(), float(d.score), found.whole)
        out.append(Explained(face, crop, m))
    return out


def overlay(crop: np.ndarray, heat: np.ndarray, scale: int = SCALE, alpha: float = ALPHA) -> np.ndarray:
    """uint8 RGB (S*scale)^2 x 3: the crop (C x S x S, grey or RGB) with the heat map (S x S in [0, 1]) in JET
    colours (red = where the class's evidence is) blended over it."""
    import cv2

    img = crop[0] if crop.shape[0] == 1 else crop.transpose(1, 2, 0)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else np.ascontiguousarray(img)
    side = crop.shape[-1] * scale
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
    h = cv2.resize(np.asarray(heat, np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.clip(h * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return cv2.addWeighted(img, 1 - alpha, colours, alpha, 0)


def panel(e: Explained, scale: int = SCALE) -> np.ndarray:
    """uint8 RGB row: the face, then one overlay per heat map, each captioned (class and probability)."""
    import cv2

    side = e.crop.shape[-1] * scale
    crop = e.crop[0] if e.crop.shape[0] == 1 else e.crop.transpose(1, 2, 0)
    face = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB) if crop.ndim == 2 else np.ascontiguousarray(crop),
                      (side, side), interpolation=cv2.INTER_CUBIC)
    tiles = [(face, "face")]
    for i, (c, m) in enumerate(e.maps.items()):
        tiles.append((overlay(e.crop, m, scale), f"{'pred' if i == 0 else 'given'} {c} {e.face.probs[c]:.2f}"))
    cap = 22
    out = np.full((side + cap, len(tiles) * (side + 4), 3), 255, np.uint8)
    for j, (t, text) in enumerate(tiles):
        x = j * (side + 4)
        out[cap:, x:x + side] = t
        cv2.putText(out, text, (x + 2, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def explained_png(items: list[Explained], dst: Path) -> None:
    """One PNG, a row per face (`panel`), rows padded to the widest."""
    import cv2

    rows = [panel(e) for e in items]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(dst), np.concatenate(rows)[:, :, ::-1]):
        raise RobustferError(f"cannot write {dst}")


def overlay_data_uri(e: Explained, scale: int = 2) -> str:
    """The predicted class's overlay as a data: URI (PNG), for the serve page."""
    import cv2

    ok, buf = cv2.imencode(".png", overlay(e.crop, next(iter(e.maps.values())), scale)[:, :, ::-1])
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def run_explain(inputs: list[str], out: str | Path, checkpoint=None, given: str | None = None, detector=None,
                no_detect: bool = False, device: str = "cpu") -> int:
    """`robustfer explain`: for each image, OUT/<its relative path>.cam.png and one line per face (label,
    probability, file); an image without a face gets the one line "PATH: no face found" (predict's) and no
    file. Exit status as predict's: 0 when every input was processed (no face counts as processed), 1 when any
    failed (one 'error:' line each); a bad model or option is a RobustferError (exit 2)."""
    check_detector(detector, no_detect)
    items, errors = collect_inputs(inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    pred = Predictor(checkpoint=checkpoint, detector=detector, device=device, no_detect=no_detect)
    if given is not None and given not in pred.classes:
        raise RobustferError(f"--given {given!r} is not a class of this model ({', '.join(pred.classes)})")
    _ = pred.detector
    out = Path(out)
    failed = len(errors)
    for path, rel in items:
        if path.suffix.lower() not in IMAGE_EXTS:
            print(f"error: {path}: explain takes images, not videos", file=sys.stderr)
            failed += 1
            continue
        try:
            found = explain(pred, path, given)
            if not found:
                print(f"{path}: no face found")
                continue
            dst = out / rel.with_name(rel.name + ".cam.png")
            explained_png(found, dst)
            for i, e in enumerate(found, 1):
                f = e.face
                extra = f"; given {given} {f.probs[given]:.2f}" if given is not None else ""
                print(f"{path}: face {i} box {list(f.box)}{' (whole image)' if f.whole else ''} -> {f.label} "
                      f"{f.probs[f.label]:.2f}{extra}; heat map {dst}")
        except RobustferError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a folder
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            print(f"error: {path}: {e.__class__.__name__} {msg}".rstrip(), file=sys.stderr)
            failed += 1
        sys.stdout.flush()
    if not items and not errors:
        print("error: no input given", file=sys.stderr)
        return 1
    return 1 if failed else 0
