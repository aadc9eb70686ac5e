"""Numerical faults (issue 18, item 3): a NaN / inf loss or gradient stops train and pretrain with one line
naming the epoch and step, before the optimiser step; last.pt stays the last good epoch's, byte for byte, and
--resume continues from it; --detect-anomaly names the operation; the gradient norm is logged per epoch."""
import json
import math
import subprocess
import sys

import pytest
import torch

from robustfer.cli import main
from robustfer.errors import RobustferError
from robustfer.methods.ce import CE
from robustfer.train import TrainConfig, train
from robustfer.train.progress import EpochProgress
from robustfer.train.trainer import Run, grad_norm

# 192 images / batch 64 = 3 steps per epoch
ARGS = ["--dataset", "ferplus", "--epochs", "2", "--limit", "192", "--batch-size", "64", "--seed", "3",
        "--eval-split", "valid", "--eval-limit", "128", "--threads", "1", "--quiet"]


def _cfg(root, out, **kw):
    base = dict(dataset="ferplus", root=str(root), out=str(out), epochs=2, limit=192, batch_size=64, seed=3,
                eval_split="valid", eval_limit=128, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s")
    return rows


def _fault_at(monkeypatch, epoch, step, kind):
    """CE's loss made faulty at one (epoch, step-within-epoch): `loss` NaN, or `grad` a finite loss whose
    gradient is NaN (0 * sqrt(w - w): value 0, derivative 0 * inf)."""
    real = CE.loss

    def faulty(self, model, batch, state):
        loss, stats = real(self, model, batch, state)
        if state.epoch == epoch and state.step == epoch * 3 + step:
            if kind == "loss":
                loss = loss * float("nan")
            else:
                w = next(model.parameters())
                loss = loss + 0.0 * torch.sqrt(w - w).sum()
        return loss, stats
    monkeypatch.setattr(CE, "loss", faulty)


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_nan_loss_stops_naming_epoch_and_step_keeps_last_pt_bytes_and_resume_finishes_the_run(
        tmp_path, ferplus_root, capsys, monkeypatch):
    root = ["--root", str(ferplus_root)]
    assert main(["train", *root, *ARGS, "--out", str(tmp_path / "full")]) == 0
    train(_cfg(ferplus_root, tmp_path / "r"), quiet=True, stop_after=1)  # epoch 0 done, as after a kill
    last = tmp_path / "r" / "last.pt"
    good = last.read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as m:
        _fault_at(m, 1, 2, "loss")
        assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--quiet"]) == 2
    err = _err(capsys)
    assert len(err.splitlines()) == 1
    assert err.startswith("error: loss became nan at epoch 1 step 2 (ce, lr ")
    assert f"{tmp_path / 'r'}/last.pt keeps the last good epoch (continue with --resume)" in err
    assert last.read_bytes() == good                               # the last good epoch's file, untouched
    assert torch.load(last, weights_only=True)["epoch"] == 1       # and readable
    assert len(_rows(tmp_path / "r")) == 1 and not list((tmp_path / "r").glob(".*tmp*"))
    # the fault gone, --resume finishes the run exactly as the uninterrupted one
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--quiet"]) == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _rows(tmp_path / "full") == _rows(tmp_path / "r")


def test_nan_gradient_with_a_finite_loss_stops_before_the_optimiser_step(tmp_path, ferplus_root, monkeypatch):
    _fault_at(monkeypatch, 0, 1, "grad")
    run = Run(_cfg(ferplus_root, tmp_path / "r"), quiet=True)
    with pytest.raises(RobustferError, match=r"^gradient norm became nan at epoch 0 step 1 \(ce, lr .*with a finite "
                                             r"loss.*the weights were not updated, no epoch had finished, so .* holds "
                                             r"no checkpoint; --detect-anomaly names the operation$"):
        with EpochProgress(quiet=True) as progress:
            progress.start("epoch 1", 192)
            run.train_epoch(progress)
    assert run.state.step == 1                                      # step 0 done, step 1 refused
    assert all(torch.isfinite(p).all() for p in run.model.parameters())  # NaN never reached the weights
    assert all(torch.isfinite(v).all() for s in run.opt.state.values() for v in s.values() if torch.is_tensor(v))


def test_detect_anomaly_names_the_backward_operation_and_is_off_again_afterwards(tmp_path, ferplus_root, capsys,
                                                                                  monkeypatch):
    seen = []
    real = CE.loss

    def spy(self, model, batch, state):
        seen.append(torch.is_anomaly_enabled())
        return real(self, model, batch, state)
    monkeypatch.setattr(CE, "loss", spy)
    _fault_at(monkeypatch, 0, 1, "grad")
    with pytest.warns(UserWarning, match="Error detected in SqrtBackward0"):   # torch: the forward call's stack
        assert main(["train", "--root", str(ferplus_root), *ARGS, "--out", str(tmp_path / "r"), "--detect-anomaly"]) == 2
    err = _err(capsys)
    assert err.startswith("error: Function 'SqrtBackward0' returned nan values in its 0th output at epoch 0 step 1 "
                          "(ce, lr ") and "--detect-anomaly" in err and len(err.splitlines()) == 1
    assert seen == [True, True] and not torch.is_anomaly_enabled()
    seen.clear()
    assert main(["train", "--root", str(ferplus_root), *ARGS, "--out", str(tmp_path / "plain")]) == 2  # without it
    assert _err(capsys).startswith("error: gradient norm became nan at epoch 0 step 1") and seen == [False, False]


def test_a_diverging_run_exits_non_zero_with_one_line_and_no_traceback(tmp_path, ferplus_root):
    """No monkeypatching: lr 1e30 blows the weights up after the first step, in the real console command."""
    p = subprocess.run([sys.executable, "-m", "robustfer", "train", "--root", str(ferplus_root), *ARGS, "--lr", "1e30",
                        "--precision", "fp32", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("error: ") and " at epoch 0 step " in p.stderr
    assert any(f"{what} became {v} at epoch 0 step" in p.stderr for what in ("loss", "gradient norm")
               for v in ("nan", "inf", "-inf"))
    assert f"no epoch had finished, so {tmp_path / 'r'} holds no checkpoint" in p.stderr  # and none is promised
    assert not (tmp_path / "r" / "last.pt").exists()


def test_gradient_norm_is_logged_per_epoch_to_metrics_and_tensorboard(tmp_path, ferplus_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg(ferplus_root, tmp_path / "r"), quiet=True)
    rows = _rows(tmp_path / "r")
    for r in rows:
        assert math.isfinite(r["grad_norm_mean"]) and 0 < r["grad_norm_mean"] <= r["grad_norm_max"] < 1e4
    ea = EventAccumulator(str(tmp_path / "r"))
    ea.Reload()
    logged = [e.value for e in ea.Scalars("grad_norm_max")]
    assert logged == pytest.approx([r["grad_norm_max"] for r in rows], rel=1e-6)


def test_grad_norm_is_the_l2_norm_over_all_gradients():
    a, b, c = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 12.0])   # c has none
    assert grad_norm([a, b, c]).item() == pytest.approx(13.0)
    b.grad[0] = float("inf")
    assert not torch.isfinite(grad_norm([a, b, c]))
