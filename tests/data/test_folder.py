"""Folder-per-class reader on generated `root/<split>/<class>/` and flat `root/<class>/` trees."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robustfer.data.folder as folder
from robustfer.data import load_dataset
from robustfer.data.classes import FERPLUS
from robustfer.data.folder import load_folder
from reader_checks import error, names

# relative path -> grey value; the test split has no 'sad' folder
TREE = {
    "train/Happy/b.png": 10, "train/Happy/a.jpg": 20, "train/sad/x.BMP": 30,
    "train/Neutral/n1.jpeg": 40, "train/Neutral/n2.JPG": 50,
    "test/happy/t1.png": 60, "test/neutral/t2.png": 70,
}


def write_image(path: Path, grey: int, size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    Image.new("RGB", (size, size), (grey, grey, grey)).save(path, fmt)


def make_tree(root: Path, tree: dict[str, int] = TREE) -> Path:
    for rel, grey in tree.items():
        write_image(root / rel, grey)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "faces")
    (root / "train" / "Happy" / "notes.txt").write_text("not an image")
    (root / "train" / "Happy" / ".DS_Store").write_bytes(b"\0")
    write_image(root / "train" / ".ipynb_checkpoints" / "c.png", 99)
    return root


def test_split_layout_classes_labels_files_and_pixels(root, tmp_path):
    data = load_folder(root, "train", cache_dir=tmp_path / "cache")
    assert (data.name, data.split, data.extra["layout"]) == ("folder", "train", "split")
    assert data.classes == ("happiness", "neutral", "sadness")
    assert data.files == ["train/Happy/a.jpg", "train/Happy/b.png", "train/Neutral/n1.jpeg",
                          "train/Neutral/n2.JPG", "train/sad/x.BMP"]
    assert names(data) == ["happiness", "happiness", "neutral", "neutral", "sadness"]
    assert data.images.shape == (5, 1, 48, 48) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert [int(im.min()) for im in data.images] == [int(im.max()) for im in data.images] == [20, 10, 40, 50, 30]


def test_splits_share_one_class_list(root, tmp_path):
    test = load_dataset("folder", root, "test", channels=3, size=24, cache_dir=tmp_path / "cache")
    assert test.classes == ("happiness", "neutral", "sadness")  # 'sad' only exists under train/
    assert names(test) == ["happiness", "neutral"] and test.files == ["test/happy/t1.png", "test/neutral/t2.png"]
    assert test.images.shape == (2, 3, 24, 24) and (test.images[1] == 70).all()


def test_flat_layout_serves_every_split(tmp_path):
    root = make_tree(tmp_path / "flat", {"angry/1.png": 5, "Happy/2.png": 6, "Happy/3.png": 7})
    for split in ("train", "test"):
        data = load_folder(root, split, cache_dir=tmp_path / "cache")
        assert data.extra["layout"] == "flat" and data.split == split
        assert data.classes == ("anger", "happiness")
        assert data.files == ["Happy/2.png", "Happy/3.png", "angry/1.png"]
        assert names(data) == ["happiness", "happiness", "anger"]


def test_given_classes_fix_the_order(root, tmp_path):
    data = load_folder(root, "train", cache_dir=tmp_path / "cache", classes=("Sad", "anger", "Happy", "neutral"))
    assert data.classes == ("sadness", "anger", "happiness", "neutral")
    assert names(data) == ["happiness", "happiness", "neutral", "neutral", "sadness"]
    assert list(data.labels) == [2, 2, 3, 3, 0]
    ferplus = load_folder(root, "test", cache_dir=tmp_path / "cache", classes="ferplus")
    assert ferplus.classes == FERPLUS and names(ferplus) == ["happiness", "neutral"]


def test_cache_is_reused(root, assert_cache_reused):
    assert_cache_reused(lambda c: load_folder(root, "train", cache_dir=c), folder, "decode_files", "folder")


def test_cache_invalidated_by_changed_or_added_image(root, tmp_path):
    cache = tmp_path / "cache"
    assert (load_folder(root, "test", cache_dir=cache).images[0] == 60).all()
    img = root / "test" / "happy" / "t1.png"
    write_image(img, 61)
    os.utime(img, ns=(1_000_000_000, 1_000_000_000))
    assert (load_folder(root, "test", cache_dir=cache).images[0] == 61).all()
    write_image(root / "test" / "happy" / "t0.png", 62)
    data = load_folder(root, "test", cache_dir=cache)
    assert len(data) == 3 and [int(im.max()) for im in data.images] == [62, 61, 70]


def test_unknown_folder_with_given_classes(root, tmp_path):
    msg = error(load_folder, root, "test", cache_dir=tmp_path / "cache", classes=("happiness", "neutral"))
    assert str(root / "train" / "sad") in msg and "'sadness'" in msg


def test_two_folders_one_class(tmp_path):
    root = make_tree(tmp_path / "flat", {"happy/1.png": 5, "Happiness/2.png": 6})
    msg = error(load_folder, root, "train", cache_dir=tmp_path / "cache")
    assert str(root / "Happiness") in msg and str(root / "happy") in msg


def test_missing_split_and_empty_trees(root, tmp_path):
    msg = error(load_folder, root, "val", cache_dir=tmp_path / "cache")
    assert str(root / "val") in msg and "test, train" in msg
    assert str(tmp_path / "nope") in error(load_folder, tmp_path / "nope", "train", cache_dir=tmp_path / "cache")
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    assert "no .jpg" in error(load_folder, tmp_path / "empty", "train", cache_dir=tmp_path / "cache")
    (tmp_path / "bare").mkdir()
    assert "no class sub-folders" in error(load_folder, tmp_path / "bare", "train", cache_dir=tmp_path / "cache")


def test_corrupt_image_leaves_no_cache(root, tmp_path):
    cache = tmp_path / "cache"
    bad = root / "train" / "sad" / "y.png"
    bad.write_bytes(b"\x89PNG broken")
    msg = error(load_folder, root, "train", cache_dir=cache)
    assert str(bad) in msg and "corrupt image" in msg
    assert not cache.exists() or not list(cache.iterdir())


def test_stray_folders_beside_the_splits_are_not_classes(root, tmp_path):
    write_image(root / "__MACOSX" / "train" / "Happy" / "._a.png", 1)
    write_image(root / "extras" / "logos" / "l.png", 2)
    data = load_folder(root, "test", cache_dir=tmp_path / "cache")
    assert data.classes == ("happiness", "neutral", "sadness")
