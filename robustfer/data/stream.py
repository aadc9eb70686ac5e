"""Data sets larger than memory: the decoded cache stays memory-mapped and each batch's rows travel to the
device when the batch is drawn, instead of the whole uint8 array living there.

- `RowView`: rows of a memory-mapped array, read only when used, so that a subset (--limit, --imbalance,
  a held-out or cross-fitting fold) of a large data set is not copied into memory (FERData.subset uses it).
- `StreamedImages`: what the trainer indexes instead of the device tensor. `images[idx]` reads the rows
  `idx` (in sorted order, for locality on disk), pins them (CUDA) and copies them to the device; given the
  epoch's batches in advance (`plan`), a background thread reads the next two while the current one trains.
  The order, the batches and the augmentation are those of the in-memory path, so a streamed run gives the
  same figures as an in-memory one.
- `place_images`: in memory or streamed, `--data-in-memory auto|yes|no`; auto keeps the array in memory when
  it takes at most half the free memory of the device (per process on a shared host).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from robustfer.errors import RobustferError

MODES = ("auto", "yes", "no")


def read_rows(array, idx: np.ndarray) -> np.ndarray:
    """array[idx] as a new contiguous array, the rows read in ascending order (sequential on disk)."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(array, RowView):
        return read_rows(array.base, array.index[idx])
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx),) + tuple(array.shape[1:]), dtype=array.dtype)
    out[order] = array[idx[order]]
    return out


class RowView:
    """Rows `index` of a (memory-mapped) array, read when used: np.array(view), view[i], view[array] read;
    view[a:b] is another RowView. Shape, dtype, nbytes and len() as an array's."""

    def __init__(self, base, index):
        if isinstance(base, RowView):
            base, index = base.base, base.index[np.asarray(index, dtype=np.int64)]
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple:
        return (len(self.index),) + tuple(self.base.shape[1:])

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.base.dtype.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return RowView(self.base, self.index[key])
        if isinstance(key, (int, np.integer)):
            return np.asarray(self.base[self.index[key]])
        if isinstance(key, tuple):  # rows first (read only those), then the rest of the index
            rows = np.asarray(self[key[0]])
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None),) + key[1:]]
        return read_rows(self.base, self.index[np.asarray(key)])

    def __array__(self, dtype=None, copy=None):
        out = read_rows(self.base, self.index)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowView({len(self)} of {len(self.base)} rows, {self.dtype}, {self.shape[1:]})"


def take_rows(images, idx: np.ndarray):
    """Rows `idx` of an image array: a RowView of a memory map (nothing read now), else a contiguous copy."""
    if isinstance(images, (np.memmap, RowView)):
        return RowView(images, idx)
    return np.ascontiguousarray(images[idx])


def free_memory(device: torch.device) -> float:
    """Bytes free for the images: the GPU's free memory, or the host's MemAvailable (inf if unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


class StreamedImages:
    """A uint8 N x C x H x W image array left where it is (memory map, RowView, array), moved to the device a
    batch at a time: images[idx] (a tensor or array of row indices) or images[a:b] -> uint8 tensor on `device`."""

    def __init__(self, array, device: torch.device, ahead: int = 2):
        self.array, self.device, self.ahead = array, torch.device(device), ahead
        self.shape = tuple(array.shape)
        self._keys: list[np.ndarray] = []
        self._pending: dict[int, Future] = {}
        self._next = 0
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _to_device(self, rows: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(rows if rows.flags.writeable else np.array(rows))  # a memory map's rows are read-only
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return self._to_device(read_rows(self.array, idx))

    def window(self, start: int, stop: int) -> "StreamedImages":
        """Rows start..stop, still streamed (a part of an evaluation split)."""
        part = self.array[start:stop] if isinstance(self.array, (np.ndarray, RowView)) else RowView(self.array, np.arange(start, stop))
        return StreamedImages(part, self.device, self.ahead)

    def plan(self, keys: list) -> None:
        """The row indices of every batch the epoch will ask for, in order: read `ahead` of them in advance."""
        self._keys = [np.asarray(k.cpu() if torch.is_tensor(k) else k, dtype=np.int64) for k in keys]
        self._pending.clear()
        self._next = 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="robustfer-stream")
        self._submit()

    def _submit(self) -> None:
        for b in range(self._next, min(self._next + self.ahead, len(self._keys))):
            if b not in self._pending:
                self._pending[b] = self._pool.submit(self.read, self._keys[b])

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and isinstance(self.array, (np.ndarray, RowView)):
                return self._to_device(np.ascontiguousarray(self.array[start:stop]))
            return self.read(np.arange(start, stop, step))
        idx = np.asarray(key.cpu() if torch.is_tensor(key) else key, dtype=np.int64)
        b = self._next
        if b < len(self._keys) and len(self._keys[b]) == len(idx) and np.array_equal(self._keys[b], idx):
            out = self._pending.pop(b).result() if b in self._pending else self.read(idx)
            self._next += 1
            self._submit()
            return out
        return self.read(idx)  # not the planned batch: read it now

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def plan(images, keys) -> None:
    """Tell streamed images the epoch's batches (no-op for an in-memory tensor)."""
    if isinstance(images, StreamedImages):
        images.plan(keys)


def to_device(array, device: torch.device, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """The whole array as one uint8 tensor on `device`; to a GPU in chunks of 256 MB (no full host copy)."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.from_numpy(np.array(array))
    out = torch.empty(tuple(array.shape), dtype=torch.uint8, device=device)
    per = max(1, chunk_bytes // max(1, int(np.prod(array.shape[1:]))))
    for i in range(0, len(array), per):
        out[i:i + per].copy_(torch.from_numpy(np.ascontiguousarray(array[i:i + per])))
    return out


def place_images(array, device: torch.device, mode: str | None = "auto", share: int = 1, what: str = "training",
                 quiet: bool = False):
    """(images, 'yes' or 'no'): a device tensor (in memory) or StreamedImages. `auto` streams when the array
    takes more than half of the device's free memory / `share` (processes sharing it)."""
    mode = mode or "auto"
    if mode not in MODES:
        raise RobustferError(f"--data-in-memory {mode!r}: use auto, yes or no")
    device = torch.device(device)
    need = float(getattr(array, "nbytes", 0))
    budget = 0.5 * free_memory(device) / max(1, share)
    stream = mode == "no" or (mode == "auto" and need > budget)
    if stream:
        if mode == "auto" and not quiet:
            print(f"streaming the {len(array):,} {what} images ({need / 2**30:.1f} GiB) from the memory-mapped cache to "
                  f"{device} per batch: more than half the free memory ({budget / 2**30:.1f} GiB per process); "
                  "--data-in-memory yes forces them into memory", file=sys.stderr)
        return StreamedImages(array, device), "no"
    return to_device(array, device), "yes"
