from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_ferplus(root: Path, counts: tuple[int, int, int] = (64, 16, 16), seed: int = 0) -> Path:
    """A tiny FERPlus-layout data set (FER2013Train/Valid/Test, label.csv + 48x48 grey PNGs): class c
    (i mod 8) is a bright block at a class-dependent place on noise, so a few epochs learn something; every
    image has 7 votes for its class and 1 or 3 for a neighbour (3 makes a 2-class PLL candidate set), the
    rest unknown / not-a-face."""
    rng = np.random.default_rng(seed)
    for folder, n in zip(("FER2013Train", "FER2013Valid", "FER2013Test"), counts):
        (root / folder).mkdir(parents=True)
        rows = []
        for i in range(n):
            c = i % 8
            img = rng.integers(0, 80, (48, 48)).astype(np.uint8)
            img[(c // 4) * 24:(c // 4) * 24 + 24, (c % 4) * 12:(c % 4) * 12 + 12] += 150
            name = f"fer{i:07d}.png"
            Image.fromarray(img).save(root / folder / name)
            votes = [0] * 10
            votes[c] = 7
            votes[(c + 1 + i % 3) % 8] = 3 if i % 2 else 1
            votes[8 + i % 2] += 10 - sum(votes)
            rows.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        (root / folder / "label.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_ferplus(tmp_path_factory) -> Path:
    return make_ferplus(tmp_path_factory.mktemp("data") / "ferplus")
