"""pretrain's numerical faults (issue 18, item 3): the gradient norm is logged per epoch; a NaN loss stops with
one line naming the epoch and step and leaves last.pt as it was; --detect-anomaly reaches the loop."""
import json
import math

import pytest
import torch

from robustfer.cli import main
from robustfer.pretrain import PretrainConfig, pretrain
from robustfer.pretrain.simsiam import SimSiam


def _cfg(root, out, **kw):
    base = dict(dataset="ferplus", root=str(root), out=str(out), objective="simsiam", model="compact_s", limit=64,
                batch_size=32, epochs=2, seed=5, threads=1)
    base.update(kw)
    return PretrainConfig(**base)


def test_gradient_norm_is_logged_and_a_nan_loss_stops_keeping_last_pt(tmp_path, ferplus_root, capsys, monkeypatch):
    pretrain(_cfg(ferplus_root, tmp_path / "r"), quiet=True, stop_after=1)
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    assert math.isfinite(row["grad_norm_mean"]) and 0 < row["grad_norm_mean"] <= row["grad_norm_max"]
    good = (tmp_path / "r" / "last.pt").read_bytes()
    real, anomaly = SimSiam.loss, []

    def nan_at_epoch_1_step_1(self, x, g):
        anomaly.append(torch.is_anomaly_enabled())
        loss, stats = real(self, x, g)
        return (loss * float("nan") if len(anomaly) == 2 else loss), stats
    monkeypatch.setattr(SimSiam, "loss", nan_at_epoch_1_step_1)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="Error detected in"):  # torch's note with the forward call's stack
        assert main(["pretrain", "--out", str(tmp_path / "r"), "--resume", "--quiet", "--detect-anomaly"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    # under anomaly mode autograd names the op first, else the loss check: the epoch and step either way
    assert " at epoch 1 step 1 (simsiam, lr " in err and err.startswith("error: ")
    assert f"{tmp_path / 'r'}/last.pt keeps the last good epoch" in err
    assert anomaly == [True, True] and not torch.is_anomaly_enabled()
    assert (tmp_path / "r" / "last.pt").read_bytes() == good
