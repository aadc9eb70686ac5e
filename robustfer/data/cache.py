"""Decode once: the first load decodes every image into one uint8 array saved as .npy; later loads
memory-map it. The key covers every source file's path, size and mtime plus the decode settings, so a
changed, added or removed image invalidates the cache. Writes are atomic (temp file + rename)."""
from __future__ import annotations

import hashlib
import os
import re
import warnings
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
            what = "broken symlink" if os.path.islink(p) else "missing image"
            raise RobustferError(f"{what} {p}: restore it or remove its row from the label file") from None
        except OSError as e:  # a symlink loop (ELOOP), a path through a file (ENOTDIR), no permission
            raise RobustferError(f"cannot read image {p} ({e.strerror}): fix the link or the file's permissions, "
                                 "or remove its row from the label file") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for p in content:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:24]


SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert to L or RGB. 16-bit grey (PNG 'I;16', TIFF 'I') is scaled to 8 bits (v / 257), where Pillow's
    own convert would clip every value above 255 to white; every other mode (RGBA, LA, P, CMYK, 1, ...) is
    Pillow's convert (alpha ignored, palette applied)."""
    if im.mode in SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    return im.convert(mode)


def decode_image(path: Path, size: int, channels: int, box: tuple[int, int, int, int] | None = None,
                 source: str | Path | None = "the label file") -> np.ndarray:
    """One image file, cropped to `box` (x, y, w, h; clamped to the image) if given -> C x size x size uint8.
    A missing or corrupt file, one above Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS), or a
    box outside the image is a RobustferError naming it and `source` (None: an image found in a folder)."""
    fix = f"remove its row from {source}" if source is not None else "delete it"
    try:
        with Image.open(path) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:
                raise Image.DecompressionBombError(f"{im.width}x{im.height} = {im.width * im.height} pixels")
            if box is not None:
                x, y, w, h = box
                l, t, r, b = max(0, x), max(0, y), min(im.width, x + w), min(im.height, y + h)
                if r <= l or b <= t:
                    raise RobustferError(f"face box {box} of {path} lies outside the {im.width}x{im.height} image: "
                                         f"fix its row in {source}")
                im = im.crop((l, t, r, b))
            im = _to_mode(im, "L" if channels == 1 else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise RobustferError(f"missing image {path}: restore it or {fix}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"(\d+x\d+ = )?\d+ pixels", str(e))
        raise RobustferError(
            f"image {path} is too large to decode safely ({m.group(0) if m else e}, above Pillow's decompression-bomb "
            f"limit of {Image.MAX_IMAGE_PIXELS} pixels): shrink or replace it, or {fix}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, UnidentifiedImageError):
            why = "empty file" if os.path.getsize(path) == 0 else "not an image file Pillow can read"
        else:
            why = f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        raise RobustferError(f"corrupt image {path} ({why}): replace the file or {fix}") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode_all(work: Callable[[int], None], n: int) -> None:
    """Run work(0..n-1) on threads (PIL releases the GIL). Every item is tried; if any failed, the first
    failure's message is raised with the count of the others, so one run names every problem's size.
    Pillow's decompression-bomb warnings become errors meanwhile (decode_image also checks the size)."""
    errors: list[tuple[int, RobustferError]] = []

    def one(i: int) -> None:
        try:
            work(i)
        except RobustferError as e:
            errors.append((i, e))

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            list(pool.map(one, range(n)))
    if errors:
        errors.sort(key=lambda e: e[0])
        more = f" ({len(errors) - 1} more unreadable images after it)" if len(errors) > 1 else ""
        raise RobustferError(f"{errors[0][1]}{more}")


def decode_files(paths: Sequence[Path], size: int, channels: int,
                 source: str | Path | None = "the label file") -> np.ndarray:
    """Decode many files into one N x C x size x size uint8 array (see decode_all)."""
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, channels, source=source)

    decode_all(work, len(paths))
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
