"""Fixtures shared by the inference tests: a tiny model trained on real FERPlus and a synthetic photo (FERPlus
faces pasted on a canvas) in which the default detector finds the faces."""
import cv2
import numpy as np
import pytest


@pytest.fixture(scope="package")
def model(tmp_path_factory, ferplus_root):
    from robustfer.train import TrainConfig, train

    run = tmp_path_factory.mktemp("predict") / "run"
    train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(run), epochs=1, limit=64, batch_size=32,
                      seed=1, eval_split="valid", eval_limit=32), quiet=True)
    return run


@pytest.fixture(scope="package")
def crops(ferplus_root):
    files = sorted((ferplus_root / "FER2013Test").glob("*.png"))[:12]
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def _canvas(crops, sizes=(96, 128, 160), shape=(360, 640)):
    """A grey RGB canvas with FERPlus faces pasted at `sizes` px, side by side; their boxes (x, y, w, h)."""
    img = np.full(shape + (3,), 170, np.uint8)
    boxes, x = [], 30
    for face, s in zip(crops, sizes):
        y = 40 + (s % 3) * 20
        img[y:y + s, x:x + s] = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)[:, :, None]
        boxes.append((x, y, s, s))
        x += s + 60
    return img, boxes


@pytest.fixture(scope="package")
def photo(crops, tmp_path_factory):
    """A canvas where the default detector finds at least 2 of 3 faces (chosen among the first test images)."""
    from robustfer.infer.detect import detect

    good = [c for c in crops if len(detect(cv2.resize(c, (128, 128), interpolation=cv2.INTER_CUBIC))) == 1]
    assert len(good) >= 3, "the default detector should find most upscaled FERPlus faces"
    img, boxes = _canvas(good[:3])
    path = tmp_path_factory.mktemp("photo") / "group.png"
    cv2.imwrite(str(path), img[:, :, ::-1])
    return path, img, boxes
