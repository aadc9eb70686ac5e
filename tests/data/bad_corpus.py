"""The bad-data corpus: tiny data sets in each publisher's layout, written into a test's tmp_path, and the
bad image files, label files and paths the tests put into them (imported by name: tests/data is on sys.path)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from robustfer.cli import main
from robustfer.data import load_dataset
from robustfer.data.classes import AFFECTNET, FER2013, FERPLUS, RAFDB

# Every data set's class list has these four; item i of GOOD is a solid image of grey GREYS[i].
GOOD = ("happiness", "sadness", "neutral", "surprise")
GREYS = (20, 80, 140, 200)
SIZE = 48


# ------------------------------------------------------------------ image files (bytes)

def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def grey_png(g: int, size=(SIZE, SIZE)) -> bytes:
    return encode(Image.new("L", size, g))


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a valid signature, IHDR (8-bit grey, width x height) and IEND: claims any size for
    a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def _palette(g: int) -> bytes:
    im = Image.new("P", (SIZE, SIZE), 3)
    im.putpalette([0, 0, 0] * 3 + [g, g, g] + [255, 255, 255] * 252)
    return encode(im)


def _sixteen_bit(g: int) -> bytes:
    im = Image.fromarray(np.full((SIZE, SIZE), g * 257, np.uint16))
    assert im.mode == "I;16"
    return encode(im)


def _noise_png() -> bytes:
    return encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)))


@dataclass(frozen=True)
class ImageCase:
    """A bad image file: `make(grey)` -> bytes; `reads(grey)` the grey the reader must return, or None when
    loading must fail with one line holding `needle` and the file's path."""
    id: str
    make: Callable[[int], bytes]
    reads: Callable[[int], int | None]
    needle: str = ""


def _ok(id, make, reads=lambda g: g):
    return ImageCase(id, make, reads)


def _bad(id, make, needle):
    return ImageCase(id, make, lambda g: None, needle)


IMAGE_CASES = [
    _ok("rgba", lambda g: encode(Image.new("RGBA", (SIZE, SIZE), (g, g, g, 128)))),  # alpha ignored
    _ok("la", lambda g: encode(Image.new("LA", (SIZE, SIZE), (g, 77)))),
    _ok("palette", _palette),
    _ok("cmyk-jpeg", lambda g: encode(Image.new("RGB", (SIZE, SIZE), (g, g, g)).convert("CMYK"), "JPEG", quality=100)),
    _ok("16-bit-grey", _sixteen_bit),  # scaled to 8 bits, not clipped to white
    _ok("1-bit", lambda g: encode(Image.new("1", (SIZE, SIZE), 1)), lambda g: 255),
    _ok("1x1", lambda g: grey_png(g, (1, 1))),
    _ok("300x100", lambda g: grey_png(g, (300, 100))),
    _ok("jpeg-under-png-name", lambda g: encode(Image.new("RGB", (SIZE, SIZE), (g, g, g)), "JPEG")),
    _bad("zero-byte", lambda g: b"", "corrupt image"),
    _bad("text-file", lambda g: b"id,label\n1,happy\n", "corrupt image"),
    _bad("truncated-png", lambda g: _noise_png()[:1200], "corrupt image"),
    _bad("truncated-jpeg", lambda g: encode(Image.new("RGB", (SIZE, SIZE), (g, g, g)), "JPEG")[:400], "corrupt image"),
    _bad("png-bad-crc", lambda g: (lambda p: p[:30] + bytes([p[30] ^ 1]) + p[31:])(_noise_png()), "corrupt image"),
    _bad("png-header-only", lambda g: png_header(SIZE, SIZE), "corrupt image"),
    # Pillow refuses > 2 x MAX_IMAGE_PIXELS itself and only warns between 1x and 2x: both are errors here
    _bad("bomb-100000x100000", lambda g: png_header(100_000, 100_000), "decompression-bomb limit"),
    _bad("bomb-10000x10000", lambda g: png_header(10_000, 10_000), "decompression-bomb limit"),
]


# ------------------------------------------------------------------ data sets in each publisher's layout

Items = list[tuple[str, bytes]]  # (class name, image bytes) per image


def good_items() -> Items:
    return [(c, grey_png(g)) for c, g in zip(GOOD, GREYS)]


def ferplus_votes(label: str) -> list[int]:
    v = [0] * 10
    v[FERPLUS.index(label)] = 8
    v[(FERPLUS.index(label) + 1) % 8] = 1  # a single vote: dropped as an outlier
    return v


@dataclass
class Kit:
    """One reader: `write(root, items, names)` lays the items out as its publisher does and returns each
    item's path relative to root, as the reader's `files` gives it; `label_file(root)`; `lines(items, names)`
    the label file's lines."""
    name: str
    write: Callable
    label_file: Callable[[Path], Path] | None
    lines: Callable | None
    names: Callable[[int], str]

    def load(self, root: Path, **kw):
        return load_dataset(self.name, root, "train", size=SIZE, **kw)


def _write_files(root: Path, rels: list[str], items: Items) -> None:
    for rel, (_, data) in zip(rels, items):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _ferplus_lines(items: Items, names: list[str]) -> list[str]:
    return [f'{n},"(0, 0, 48, 48)",' + ",".join(map(str, ferplus_votes(c))) for n, (c, _) in zip(names, items)]


def _ferplus_write(root: Path, items: Items, names: list[str] | None = None) -> list[str]:
    names = names or [KITS["ferplus"].names(i) for i in range(len(items))]
    rels = [f"FER2013Train/{n}" for n in names]
    _write_files(root, rels, items)
    (root / "FER2013Train" / "label.csv").write_text("\n".join(_ferplus_lines(items, names)) + "\n", encoding="utf-8")
    return rels


def _rafdb_lines(items: Items, names: list[str]) -> list[str]:
    return [f"{n} {RAFDB.index(c) + 1}" for n, (c, _) in zip(names, items)]


def _rafdb_write(root: Path, items: Items, names: list[str] | None = None) -> list[str]:
    names = names or [KITS["rafdb"].names(i) for i in range(len(items))]
    rels = [f"Image/aligned/{Path(n).stem}_aligned.jpg" for n in names]
    _write_files(root, rels, items)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(_rafdb_lines(items, names)) + "\n", encoding="utf-8")
    return rels


AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def _affectnet_lines(items: Items, names: list[str]) -> list[str]:
    return [AFFECTNET_HEADER] + [f"{n},,,,,1.5;2.5,{AFFECTNET.index(c)},0.1,-0.2" for n, (c, _) in zip(names, items)]


def _affectnet_write(root: Path, items: Items, names: list[str] | None = None) -> list[str]:
    names = names or [KITS["affectnet"].names(i) for i in range(len(items))]
    rels = [f"Manually_Annotated_Images/{n}" for n in names]
    _write_files(root, rels, items)
    (root / "Manually_Annotated_file_lists").mkdir(parents=True, exist_ok=True)
    (root / "Manually_Annotated_file_lists" / "training.csv").write_text(
        "\n".join(_affectnet_lines(items, names)) + "\n", encoding="utf-8")
    return rels


def _folder_write(root: Path, items: Items, names: list[str] | None = None) -> list[str]:
    names = names or [KITS["folder"].names(i) for i in range(len(items))]
    rels = [f"train/{c}/{n}" for n, (c, _) in zip(names, items)]
    _write_files(root, rels, items)
    return rels


KITS = {
    "ferplus": Kit("ferplus", _ferplus_write, lambda r: r / "FER2013Train" / "label.csv", _ferplus_lines,
                   lambda i: f"fer{i:07d}.png"),
    "rafdb": Kit("rafdb", _rafdb_write, lambda r: r / "EmoLabel" / "list_patition_label.txt", _rafdb_lines,
                 lambda i: f"train_{i + 1:05d}.jpg"),
    "affectnet": Kit("affectnet", _affectnet_write, lambda r: r / "Manually_Annotated_file_lists" / "training.csv",
                     _affectnet_lines, lambda i: f"10{i % 2}/img{i}.jpg"),
    "folder": Kit("folder", _folder_write, None, None, lambda i: f"img{i}.png"),
}


# fer2013.csv: the images are pixel strings in the csv; item i's face is solid GREYS[i]
FER2013_HEADER = "emotion,pixels,Usage"


def fer2013_line(label: str, grey: int, usage: str = "Training") -> str:
    return f"{FER2013.index(label)},{' '.join([str(grey)] * SIZE * SIZE)},{usage}"


def fer2013_lines(items=tuple(zip(GOOD, GREYS))) -> list[str]:
    return [FER2013_HEADER] + [fer2013_line(c, g) for c, g in items]


# ------------------------------------------------------------------ checks

def read_back(data) -> dict[str, tuple[str, list[int]]]:
    """{file: (class name, the distinct pixel values of its image)} of a loaded split."""
    return {f: (data.classes[y], np.unique(np.asarray(im)).tolist())
            for f, y, im in zip(data.files, data.labels, data.images)}


def expected(rels: list[str], items: Items, greys=GREYS) -> dict[str, tuple[str, list[int]]]:
    return {r: (c, [g]) for r, (c, _), g in zip(rels, items, greys)}


def no_files(folder: Path) -> bool:
    """True when `folder` holds no file (the cache or run folder after a failed command); empty folders are
    allowed, partial files are not."""
    return not folder.exists() or not [p for p in folder.rglob("*") if not p.is_dir()]


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must exit non-zero with exactly one stderr line 'error: ...' and no
    traceback. Returns that line."""
    rc = main(argv)
    out = capsys.readouterr()
    assert rc != 0, out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def summary_argv(dataset: str, root: Path) -> list[str]:
    return ["data", "summary", "--dataset", dataset, "--root", str(root), "--splits", "train", "--json"]


def loop_link(path: Path) -> None:
    """Make `path` a symlink to itself (a loop: stat fails with ELOOP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.symlink(path.name, path)
