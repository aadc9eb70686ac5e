"""RAF-DB basic reader on a generated copy of the authors' layout (label file + aligned JPEGs)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robustfer.data.rafdb as rafdb
from robustfer.data import load_dataset
from robustfer.data.rafdb import load_rafdb
from reader_checks import error, names

# (image name, 1-based RAF-DB id, grey value of the solid image)
ROWS = [
    ("train_00001.jpg", 4, 10), ("train_00002.jpg", 7, 60), ("train_00003.jpg", 1, 110),
    ("test_0001.jpg", 4, 160), ("test_0002.jpg", 2, 210),
]


def write_image(path: Path, grey: int, size: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (grey, grey, grey)).save(path)  # greys round-trip JPEG exactly


def make_rafdb(root: Path, rows=ROWS) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {label}\n" for n, label, _ in rows))
    for n, _, grey in rows:
        write_image(root / "Image" / "aligned" / f"{Path(n).stem}_aligned.jpg", grey)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_rafdb(tmp_path / "RAF-DB" / "basic")


def test_train_split_labels_files_and_pixels(root, tmp_path):
    data = load_rafdb(root, "train", cache_dir=tmp_path / "cache")
    assert (data.name, data.split, len(data)) == ("rafdb", "train", 3)
    assert names(data) == ["happiness", "neutral", "surprise"]  # ids 4, 7, 1
    assert data.files == [f"Image/aligned/train_0000{i}_aligned.jpg" for i in (1, 2, 3)]
    assert data.images.shape == (3, 3, 100, 100) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    for img, (_, _, grey) in zip(data.images, ROWS[:3]):
        assert (img == grey).all()


def test_test_split_and_registry(root, tmp_path):
    data = load_dataset("rafdb", root, "test", cache_dir=tmp_path / "cache")
    assert len(data) == 2 and names(data) == ["happiness", "fear"]
    assert [int(im.max()) for im in data.images] == [160, 210]
    assert data.images.shape == (2, 3, 100, 100)


def test_grey_and_resized(root, tmp_path):
    data = load_rafdb(root, "test", size=32, channels=1, cache_dir=tmp_path / "cache")
    assert data.images.shape == (2, 1, 32, 32)
    assert (data.images[0] == 160).all() and (data.images[1] == 210).all()


def test_cache_is_reused(root, assert_cache_reused):
    assert_cache_reused(lambda c: load_rafdb(root, "train", cache_dir=c), rafdb, "decode_files", "rafdb")


def test_cache_invalidated_when_an_image_changes(root, tmp_path):
    cache = tmp_path / "cache"
    assert (load_rafdb(root, "train", cache_dir=cache).images[1] == 60).all()
    img = root / "Image" / "aligned" / "train_00002_aligned.jpg"
    write_image(img, 99)
    os.utime(img, ns=(1_000_000_000, 1_000_000_000))
    assert (load_rafdb(root, "train", cache_dir=cache).images[1] == 99).all()


def test_label_file_change_relabels(root, tmp_path):
    cache = tmp_path / "cache"
    load_rafdb(root, "train", cache_dir=cache)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 6\ntest_0001.jpg 3\n")
    data = load_rafdb(root, "train", cache_dir=cache)
    assert len(data) == 1 and names(data) == ["anger"]


@pytest.mark.parametrize("text, needle", [
    ("train_00001.jpg 8\n", "unknown class id 8"),
    ("train_00001.jpg 0\n", "unknown class id 0"),
    ("train_00001.jpg happy\n", "not a number"),
    ("train_00001.jpg 4 extra\n", "expected 'image label'"),
    ("val_00001.jpg 4\n", "neither 'train_' nor 'test_'"),
])
def test_bad_label_lines(root, tmp_path, text, needle):
    label = root / "EmoLabel" / "list_patition_label.txt"
    label.write_text("train_00002.jpg 1\n" + text)
    msg = error(load_rafdb, root, "train", cache_dir=tmp_path / "cache")
    assert str(label) in msg and "line 2" in msg and needle in msg


def test_missing_label_file(tmp_path):
    msg = error(load_rafdb, tmp_path, "train", cache_dir=tmp_path / "cache")
    assert "list_patition_label.txt" in msg and "--root" in msg


def test_missing_and_corrupt_images_leave_no_cache(root, tmp_path):
    cache = tmp_path / "cache"
    missing = root / "Image" / "aligned" / "train_00003_aligned.jpg"
    missing.unlink()
    msg = error(load_rafdb, root, "train", cache_dir=cache)
    assert str(missing) in msg and "missing image" in msg
    missing.write_bytes(b"not a jpeg")
    msg = error(load_rafdb, root, "train", cache_dir=cache)
    assert str(missing) in msg and "corrupt image" in msg
    assert not cache.exists() or not list(cache.iterdir())


def test_missing_image_folder_and_bad_split(root, tmp_path):
    assert "unknown RAF-DB split" in error(load_rafdb, root, "val", cache_dir=tmp_path / "cache")
    (root / "Image" / "aligned").rename(root / "Image" / "original")
    msg = error(load_rafdb, root, "train", cache_dir=tmp_path / "cache")
    assert str(root / "Image" / "aligned") in msg
