import json
import math

import pytest

from robustfer.train import TrainConfig, train


@pytest.fixture
def smoke_noise_detection(tmp_path, ferplus_root):
    """check(method): one epoch on 256 FERPlus images with 30% symmetric noise and warm-up 0 (so the epoch
    runs the method's clean/noisy selection) reports finite loss and noise precision/recall/flagged
    fraction; returns that epoch's metrics.jsonl row. One thread and 512 test images keep it quick on a
    shared CPU."""
    def check(method: str) -> dict:
        out = tmp_path / method
        train(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(out), method=method, epochs=1,
                          limit=256, batch_size=64, noise="symmetric:0.3", threads=1, eval_limit=512,
                          method_options={"warmup": 0}), quiet=True)
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert {"noise_precision", "noise_recall", "flagged_fraction"} <= set(row)
        assert 0 < row["flagged_fraction"] < 1 and not math.isnan(row["noise_precision"])
        assert math.isfinite(row["train_loss"])
        return row
    return check
