"""AffectNet reader on a generated copy of the shipped layout (csv lists + uncropped images)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robustfer.data.affectnet as affectnet
from robustfer.data import load_dataset
from robustfer.data.affectnet import load_affectnet
from robustfer.data.classes import AFFECTNET
from reader_checks import error as reader_error, names

HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
LANDMARKS = "181.64;530.91;188.32;627.82;199.35;723.37"
BOX = (16, 8, 24, 16)  # on 8-pixel JPEG block edges, so face and background stay exact

# (path, box or None, expression, face grey, background grey); ids 8, 9, 10 have no image on disk
TRAIN = [
    ("101/a1.jpg", BOX, 1, 200, 30),
    ("101/a2.png", None, 0, 80, 80),
    ("102/b1.jpg", BOX, 8, 0, 0),
    ("102/b2.jpg", BOX, 9, 0, 0),
    ("102/b3.jpg", None, 10, 0, 0),
    ("103/c1.jpg", BOX, 7, 120, 250),
    ("103/c2.jpg", BOX, 6, 40, 170),
]
VAL = [("201/v1.jpg", BOX, 3, 90, 10), ("201/v2.jpg", BOX, 7, 140, 60)]


def write_image(path: Path, box, face: int, background: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((48, 64, 3), background, np.uint8)
    if box is not None:
        x, y, w, h = box
        a[y:y + h, x:x + w] = face
    Image.fromarray(a).save(path)


def write_csv(path: Path, rows) -> None:
    lines = [HEADER]
    for name, box, expr, _, _ in rows:
        b = ",".join(map(str, box)) if box else ",,,"
        lines.append(f"{name},{b},{LANDMARKS},{expr},0.785714,-0.055556")
    path.write_text("\n".join(lines) + "\n")


def make_affectnet(root: Path, image_dir: str = "Manually_Annotated_Images") -> Path:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    write_csv(lists / "training.csv", TRAIN)
    write_csv(lists / "validation.csv", VAL)
    for name, box, expr, face, bg in TRAIN + VAL:
        if expr < 8:
            write_image(root / image_dir / name, box, face, bg)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_affectnet(tmp_path / "AffectNet")


def test_train_8_classes_drops_8_9_10_and_crops_faces(root, tmp_path):
    data = load_affectnet(root, "train", size=16, cache_dir=tmp_path / "cache")
    assert (data.name, data.split, data.classes) == ("affectnet", "train", AFFECTNET)
    assert names(data) == ["happiness", "neutral", "contempt", "anger"]  # ids 1, 0, 7, 6
    assert data.files == [f"Manually_Annotated_Images/{n}" for n in ("101/a1.jpg", "101/a2.png", "103/c1.jpg", "103/c2.jpg")]
    assert data.images.shape == (4, 3, 16, 16) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    for img, face in zip(data.images, (200, 80, 120, 40)):
        assert (img == face).all()  # only the face box survives the crop; empty box = whole image


def test_seven_classes_drop_contempt(root, tmp_path):
    data = load_dataset("affectnet", root, "train", size=16, cache_dir=tmp_path / "cache", num_classes=7)
    assert data.classes == AFFECTNET[:7] and "contempt" not in data.classes
    assert names(data) == ["happiness", "neutral", "anger"]
    assert [int(im.max()) for im in data.images] == [200, 80, 40]


def test_val_and_test_alias(root, tmp_path):
    val = load_affectnet(root, "val", size=16, channels=1, cache_dir=tmp_path / "cache")
    test = load_affectnet(root, "test", size=16, channels=1, cache_dir=tmp_path / "cache")
    assert names(val) == names(test) == ["surprise", "contempt"]
    assert (val.split, test.split) == ("val", "test")
    assert val.images.shape == (2, 1, 16, 16) and (val.images[0] == 90).all() and (val.images[1] == 140).all()
    assert np.array_equal(val.images, test.images)


def test_box_clamped_to_the_image(root, tmp_path):
    write_image(root / "Manually_Annotated_Images/101/a1.jpg", (32, 16, 32, 32), 210, 20)
    write_csv(root / "Manually_Annotated_file_lists/training.csv", [("101/a1.jpg", (32, 16, 64, 64), 1, 0, 0)])
    data = load_affectnet(root, "train", size=16, cache_dir=tmp_path / "cache")
    assert (data.images == 210).all()


def test_alternative_image_folder(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet", "Manually_Annotated/Manually_Annotated_Images")
    data = load_affectnet(root, "val", size=16, cache_dir=tmp_path / "cache")
    assert data.files[0] == "Manually_Annotated/Manually_Annotated_Images/201/v1.jpg"


def test_cache_is_reused_and_no_scratch_left(root, assert_cache_reused):
    assert_cache_reused(lambda c: load_affectnet(root, "train", size=16, cache_dir=c), affectnet, "decode_crops", "affectnet")


def test_cache_invalidated_by_image_or_box_change(root, tmp_path):
    cache = tmp_path / "cache"
    assert (load_affectnet(root, "train", size=16, cache_dir=cache).images[3] == 40).all()
    img = root / "Manually_Annotated_Images/103/c2.jpg"
    write_image(img, BOX, 66, 170)
    os.utime(img, ns=(1_000_000_000, 1_000_000_000))
    assert (load_affectnet(root, "train", size=16, cache_dir=cache).images[3] == 66).all()
    rows = [r if r[0] != "103/c2.jpg" else (r[0], None, r[2], 0, 0) for r in TRAIN]
    write_csv(root / "Manually_Annotated_file_lists/training.csv", rows)  # whole image now
    img3 = load_affectnet(root, "train", size=16, cache_dir=cache).images[3]
    assert img3.min() == 66 and img3.max() == 170


def error(fn, *args, **kw) -> str:
    """The one-line error of loading at the fixtures' 16-pixel size."""
    return reader_error(fn, *args, size=16, **kw)


@pytest.mark.parametrize("line, needle", [
    ("101/a1.jpg,16,8,24,16,1;2,11,0.1,0.2", "unknown class id 11"),
    ("101/a1.jpg,16,8,24,16,1;2,-1,0.1,0.2", "unknown class id -1"),
    ("101/a1.jpg,16,8,24,16,1;2,happy,0.1,0.2", "not an integer"),
    ("101/a1.jpg,16,8,24,16,1,2,1,0.1,0.2", "expected 9 columns"),
    ("101/a1.jpg,16,8,24,16,1;2,1,0.1", "expected 9 columns"),
    ("101/a1.jpg,16,x,24,16,1;2,1,0.1,0.2", "not numeric"),
    ("101/a1.jpg,16,8,0,16,1;2,1,0.1,0.2", "no area"),
])
def test_bad_rows(root, tmp_path, line, needle):
    csv_path = root / "Manually_Annotated_file_lists/training.csv"
    csv_path.write_text(f"{HEADER}\n101/a2.png,,,,,1;2,0,0.1,0.2\n{line}\n")
    msg = error(load_affectnet, root, "train", cache_dir=tmp_path / "cache")
    assert str(csv_path) in msg and "line 3" in msg and needle in msg


def test_bad_header(root, tmp_path):
    csv_path = root / "Manually_Annotated_file_lists/validation.csv"
    csv_path.write_text("path,x,y,w,h,landmarks,label,valence,arousal\n201/v1.jpg,16,8,24,16,1;2,3,0,0\n")
    msg = error(load_affectnet, root, "val", cache_dir=tmp_path / "cache")
    assert str(csv_path) in msg and "line 1" in msg and "header" in msg


def test_missing_files(root, tmp_path):
    cache = tmp_path / "cache"
    msg = error(load_affectnet, tmp_path, "train", cache_dir=cache)
    assert "training.csv" in msg and "--root" in msg
    img = root / "Manually_Annotated_Images/103/c1.jpg"
    img.unlink()
    msg = error(load_affectnet, root, "train", cache_dir=cache)
    assert str(img) in msg and "missing image" in msg
    (root / "Manually_Annotated_Images").rename(root / "images")
    assert "Manually_Annotated_Images" in error(load_affectnet, root, "train", cache_dir=cache)


def test_decode_errors_leave_no_cache(root, tmp_path):
    cache = tmp_path / "cache"
    img = root / "Manually_Annotated_Images/103/c2.jpg"
    img.write_bytes(b"\xff\xd8 truncated")
    msg = error(load_affectnet, root, "train", cache_dir=cache)
    assert str(img) in msg and "corrupt image" in msg and "training.csv" in msg
    assert not cache.exists() or not list(cache.iterdir())
    write_image(img, BOX, 40, 170)
    rows = [r if r[0] != "103/c2.jpg" else (r[0], (100, 100, 8, 8), r[2], 0, 0) for r in TRAIN]
    write_csv(root / "Manually_Annotated_file_lists/training.csv", rows)
    msg = error(load_affectnet, root, "train", cache_dir=cache)
    assert str(img) in msg and "outside" in msg and "training.csv" in msg
    assert not list(cache.iterdir())


def test_bad_options(root, tmp_path):
    assert "unknown AffectNet split" in error(load_affectnet, root, "valid", cache_dir=tmp_path / "c")
    assert "num_classes" in error(load_affectnet, root, "train", num_classes=6, cache_dir=tmp_path / "c")
