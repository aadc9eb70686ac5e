"""Toy data the tests of several folders share (methods: the noise-detection smoke run; train: the
DistributedDataParallel checks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TOY_CLASSES = ("anger", "happiness", "neutral", "sadness")


def make_band_faces(root: Path, per_class: int = 64, test_per_class: int = 8, seed: int = 0) -> Path:
    """A separable toy data set in the folder layout: class k = a bright horizontal band at rows
    12k..12k+11 of a dark, noisy 48 x 48 image (a band survives flips, crops, Cutout and most RandAugment ops)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k, c in enumerate(TOY_CLASSES):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 40, (48, 48)).astype(np.uint8)
                a[12 * k:12 * k + 12] = rng.integers(200, 256, (12, 48))
                Image.fromarray(a, "L").save(folder / f"{i:03d}.png")
    return root
