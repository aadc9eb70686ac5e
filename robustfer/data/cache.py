"""Decode once: the first load decodes every image into one uint8 array saved as .npy; later loads
memory-map it. The key covers every source file's path, size and mtime plus the decode settings, so a
changed, added or removed image invalidates the cache. Writes are atomic (temp file + rename)."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustfer.errors import RobustferError


def default_cache_dir() -> Path:
    """$ROBUSTFER_CACHE, else ~/.cache/robustfer."""
    return Path(os.environ.get("ROBUSTFER_CACHE", Path.home() / ".cache" / "robustfer"))


def file_key(paths: Sequence[Path], settings: str, content: Sequence[Path] = ()) -> str:
    """Hash of path/size/mtime of `paths`, the bytes of `content` files (label files), and `settings`."""
    h = hashlib.sha256(settings.encode())
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise RobustferError(f"missing image {p}: restore it or remove its row from the label file") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for p in content:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:24]


def decode_image(path: Path, size: int, channels: int, box: tuple[int, int, int, int] | None = None,
                 source: str | Path = "the label file") -> np.ndarray:
    """One image file, cropped to `box` (x, y, w, h; clamped to the image) if given -> C x size x size uint8.
    A missing or corrupt file, or a box outside the image, is a RobustferError naming it and `source`."""
    try:
        with Image.open(path) as im:
            if box is not None:
                x, y, w, h = box
                l, t, r, b = max(0, x), max(0, y), min(im.width, x + w), min(im.height, y + h)
                if r <= l or b <= t:
                    raise RobustferError(f"face box {box} of {path} lies outside the {im.width}x{im.height} image: "
                                         f"fix its row in {source}")
                im = im.crop((l, t, r, b))
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise RobustferError(f"missing image {path}: restore it or remove its row from {source}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RobustferError(
            f"corrupt image {path} ({e.__class__.__name__}): replace the file or remove its row from {source}") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode_files(paths: Sequence[Path], size: int, channels: int) -> np.ndarray:
    """Decode many files into one N x C x size x size uint8 array (threads: PIL releases the GIL)."""
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, channels)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(work, range(len(paths))))
    return out


def cached_array(key: str, name: str, build: Callable[[], np.ndarray], cache_dir: Path | None = None) -> np.ndarray:
    """Return the array cached under `name-key.npy` (memory-mapped), building and saving it on a miss."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    arr = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    except OSError as e:
        # An unwritable cache costs speed, not correctness: keep the decoded array in memory.
        if "tmp" in locals() and tmp.exists():
            tmp.unlink()
        print(f"warning: could not write image cache {path} ({e}); set ROBUSTFER_CACHE to a writable folder")
        return arr
    return np.load(path, mmap_mode="r")
