"""Pack the FERPlus folder into one compressed .npz small enough for the GPU machine's 64 MiB transfer, and
unpack it there into the same layout (lossless: the PNGs are re-encoded from the exact pixels).

    .venv/bin/python benchmarks/pack_ferplus.py pack ../shared/data/ferplus .gpu_data/ferplus.npz
    python3 benchmarks/pack_ferplus.py unpack .gpu_data/ferplus.npz /tmp/ferplus      # on the GPU machine
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("FER2013Train", "FER2013Valid", "FER2013Test")


def pack(root: Path, dest: Path) -> None:
    arrays = {}
    for split in SPLITS:
        names = sorted(p.name for p in (root / split).glob("*.png"))
        arrays[f"{split}/names"] = np.array(names)
        arrays[f"{split}/pixels"] = np.stack([np.array(Image.open(root / split / n).convert("L")) for n in names])
        arrays[f"{split}/label_csv"] = np.frombuffer((root / split / "label.csv").read_bytes(), np.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest, **arrays)
    print(f"{dest}: {dest.stat().st_size / 2**20:.1f} MiB")


def unpack(src: Path, root: Path) -> None:
    z = np.load(src)
    for split in SPLITS:
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        (d / "label.csv").write_bytes(z[f"{split}/label_csv"].tobytes())
        for name, px in zip(z[f"{split}/names"], z[f"{split}/pixels"]):
            Image.fromarray(px).save(d / str(name))
    print(f"unpacked {src} into {root}")


if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    (pack if cmd == "pack" else unpack)(Path(a), Path(b))
