"""Folder-per-class reader for any data set: `root/<split>/<class>/*.jpg|jpeg|png|bmp` when `root/<split>`
exists, else the flat `root/<class>/...`, which every split request then reads whole (one folder of
images, no split of its own). Folder names are canonicalised ('Happy' -> 'happiness').

The class list is the sorted canonical names of the class folders (in the split layout: of the requested
split folder and the usual split folders beside it, train/val/valid/validation/test..., together, so
train and test share one list even when a split lacks a class), unless `classes` is given; then a folder
name outside it is an error. Only the image files directly inside a class folder are read, sorted by
path; other files, hidden files ('._a.jpg', macOS's resource forks) and hidden folders ('.x', '__MACOSX') are
ignored. A broken or looping symlink where a class folder or image belongs is an error naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robustfer.data.base import FERData
from robustfer.data.cache import cached_array, decode_files, file_key
from robustfer.data.classes import CANONICAL, canonical_name
from robustfer.errors import RobustferError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}
SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}


def _check_link(p: Path) -> None:
    """A broken or looping symlink where a class folder or an image belongs is an error naming it (is_dir and
    is_file would call it neither, and its images would silently be missing)."""
    if p.is_symlink() and not p.exists():
        try:
            p.stat()
            why = "it cannot be followed"
        except OSError as e:
            why = e.strerror
        raise RobustferError(f"broken symlink {p} ({why}): point it at the real folder or file, or delete it")


def _subdirs(folder: Path) -> list[Path]:
    out = []
    for p in folder.iterdir():
        if not p.name.startswith((".", "__")):
            _check_link(p)
            if p.is_dir():
                out.append(p)
    return sorted(out)


def _images(folder: Path) -> list[Path]:
    """The image files directly inside a class folder, sorted."""
    out = []
    for p in folder.iterdir():
        if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."):
            _check_link(p)
            if p.is_file():
                out.append(p)
    return sorted(out)


def _class_folders(folder: Path) -> dict[str, Path]:
    """Canonical class name -> folder; two folders naming one class is an error naming both."""
    out: dict[str, Path] = {}
    for d in _subdirs(folder):
        c = canonical_name(d.name)
        if c in out:
            raise RobustferError(
                f"folders {out[c]} and {d} both name class {c!r}: merge them into one folder")
        out[c] = d
    return out


def _resolve_classes(classes: tuple[str, ...] | str | None) -> tuple[str, ...] | None:
    """A tuple of names, a comma-separated string, or a canonical list's name ('ferplus') -> canonical names."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = CANONICAL.get(classes.strip().lower()) or tuple(c for c in classes.split(",") if c.strip())
    out = tuple(canonical_name(c) for c in classes)
    if not out or len(set(out)) != len(out):
        raise RobustferError(f"classes must be distinct class names, got {classes!r}")
    return out


def load_folder(root: Path, split: str = "train", size: int = 48, channels: int = 1,
                cache_dir: Path | None = None, classes: tuple[str, ...] | str | None = None) -> FERData:
    """Read `root/<split>/<class>/` (or the flat `root/<class>/` for any split); images decoded once and cached."""
    if channels not in (1, 3):
        raise RobustferError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    if not root.is_dir():
        raise RobustferError(f"missing folder {root}: --root must hold one sub-folder per class (or per split)")
    split_dir = root / split
    if split_dir.is_dir():
        layout, where = "split", split_dir
        folders = _class_folders(split_dir)
        every = dict(folders)  # the class list spans the split folders
        for other in _subdirs(root):
            if other != split_dir and other.name.lower() in SPLIT_NAMES:
                for c, d in _class_folders(other).items():
                    every.setdefault(c, d)
    else:
        splits_here = [d.name for d in _subdirs(root) if d.name.lower() in SPLIT_NAMES]
        if splits_here:
            raise RobustferError(
                f"missing folder {split_dir}: {root} holds split folders {', '.join(splits_here)}; "
                "pass one of those as the split")
        layout, where = "flat", root
        folders = _class_folders(root)
        every = folders
    if not folders:
        raise RobustferError(f"{where} has no class sub-folders: put the images in one sub-folder per class")
    wanted = _resolve_classes(classes)
    if wanted is not None:
        for c in sorted(every):
            if c not in wanted:
                raise RobustferError(
                    f"class folder {every[c]} ({c!r}) is not one of the given classes {', '.join(wanted)}: "
                    "rename or remove it, or add the class")
        class_list = wanted
    else:
        class_list = tuple(sorted(every))
    lookup = {c: i for i, c in enumerate(class_list)}
    files, labels = [], []
    for c in sorted(folders):
        imgs = _images(folders[c])
        files += [p.relative_to(root).as_posix() for p in imgs]
        labels += [lookup[c]] * len(imgs)
    if not files:
        raise RobustferError(f"no .jpg/.jpeg/.png/.bmp images in the class folders of {where}")
    order = sorted(range(len(files)), key=files.__getitem__)
    files, labels = [files[i] for i in order], [labels[i] for i in order]
    paths = [root / f for f in files]
    key = file_key(paths, f"folder|{size}|{channels}")
    images = cached_array(key, f"folder-{split}", lambda: decode_files(paths, size, channels, source=None), cache_dir)
    return FERData(
        name="folder", split=split, classes=class_list, images=images,
        labels=np.asarray(labels, dtype=np.int64), files=files, extra={"layout": layout},
    )
