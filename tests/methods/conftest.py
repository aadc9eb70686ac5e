import json
import math
from pathlib import Path

import pytest

from robustfer.train import TrainConfig, train

from toy_data import make_band_faces


@pytest.fixture(scope="session")
def band_faces(tmp_path_factory) -> Path:
    return make_band_faces(tmp_path_factory.mktemp("band_faces"))


@pytest.fixture
def smoke_noise_detection(tmp_path, band_faces):
    """check(method): 256 separable toy images (4 classes) with 30% symmetric noise, 2 warm-up epochs and
    one epoch of the method's clean/noisy selection at 16 px (all 256 seen: no hold-out, 4 full batches); the model has learnt the bands by then, so a
    method that flags the flipped labels must reach a precision far above the noise rate (random flags:
    precision = noise rate) and find most of them. Returns the last epoch's metrics.jsonl row."""
    def check(method: str) -> dict:
        out = tmp_path / method
        train(TrainConfig(dataset="folder", root=str(band_faces), out=str(out), method=method, epochs=3,
                          batch_size=64, input_size=16, noise="symmetric:0.3", threads=1, select_split="test",
                          method_options={"warmup": 2}), quiet=True)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["flagged_fraction"] for r in rows[:2]] == [0.0, 0.0]   # warm-up: nothing excluded
        row = rows[-1]
        assert {"noise_precision", "noise_recall", "flagged_fraction"} <= set(row)
        assert 0.2 < row["noise_rate"] < 0.4 and math.isfinite(row["train_loss"])
        figures = f"precision {row['noise_precision']:.3f}, recall {row['noise_recall']:.3f}, noise rate {row['noise_rate']:.3f}"
        assert row["noise_precision"] >= 0.8, figures     # random flags: precision = the noise rate
        assert row["noise_recall"] >= 0.6, figures
        return row
    return check
