"""Several processes, one run (robustfer/train/distributed.py) and data streamed from the memory-mapped cache
(robustfer/data/stream.py), on the CPU: torchrun with 2 ranks and the gloo backend.

Two torchrun launches in all (each costs ~15 s of process start-up on 2 loaded cores): ddp_check.py's checks
(one launch, compared here) and a job whose rank 1 is killed mid-run."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddp_check
from toy_data import make_band_faces
from robustfer.data.stream import RowView, StreamedImages, place_images, take_rows
from robustfer.errors import RobustferError
from robustfer.methods import Batch, method_class
from robustfer.models import MODELS
from robustfer.train import TrainConfig, train
from robustfer.train.distributed import Dist
from robustfer.train.trainer import Run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTFER_DIST_TIMEOUT": "120"}


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_band_faces(tmp_path_factory.mktemp("bands"), per_class=32)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, data):
    """(OUT, [rank 0's, rank 1's] records) of one torchrun launch of ddp_check.py."""
    out = tmp_path_factory.mktemp("ddp")
    r = subprocess.run(LAUNCH + [str(HERE / "ddp_check.py"), str(out), str(data)], env=env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return out, [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]


def test_ddp_gradient_is_the_mean_of_the_ranks_gradients(two_ranks):
    """For a plain model call (ce), attribute calls (scn's weighted, eac's cam_logits on two views) and a step
    whose negative head gets no gradient (ncctfer's warm-up): after backward() every rank holds the mean of the
    gradients each rank's own part of the batch gives (an undistributed copy), bit for bit here (2 ranks)."""
    _, (a, b) = two_ranks
    for method in ("ce", "scn", "eac", "ncctfer"):
        ga, gb = a["grad"][method], b["grad"][method]
        for p, q, want in zip(ga["ddp"], gb["ddp"], ga["mean_own"]):
            assert torch.equal(p, q), method                                    # the same on every rank
            assert torch.allclose(p, want, rtol=1e-6, atol=1e-7), method        # = the mean of the parts'
        # the parts differ (else the test could not tell an average from a copy)
        assert max(float((x - y).abs().max()) for x, y in zip(ga["own"], gb["own"])) > 1e-3, method
    assert a["grad"]["ncctfer"]["unused"] == ["neg.weight", "neg.bias"]  # DDP marked them ready itself


def test_per_sample_state_weights_and_figures_are_identical_on_every_rank(two_ranks):
    """SCN relabelling from the first step, 2 epochs on BatchNorm's compact_s, images streamed from the cache:
    each rank relabels its own part of each batch; after the run the relabel table, the weights, BatchNorm's
    statistics and every logged figure (evaluation gathered from both ranks' parts) are the same on both ranks."""
    _, (a, b) = two_ranks
    sa, sb = a["scn"], b["scn"]
    assert set(sa["state"]) == {"scn_labels"} and int((sa["state"]["scn_labels"] >= 0).sum()) > 10
    for k in sa["state"]:
        assert torch.equal(sa["state"][k], sb["state"][k]), k
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "images_per_s"} for r in h]  # noqa: E731
    assert strip(sa["history"]) == strip(sb["history"]) and len(sa["history"]) == 2


def test_only_rank_0_writes_the_run_folder(two_ranks):
    out, (a, _) = two_ranks
    assert a["world"] == 2
    run = out / "scn"
    assert len(rows(run)) == 2 and len(list(run.glob("events.out.tfevents.*"))) == 1
    assert not list(run.glob(".*tmp*")) and (run / "summary.json").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["data_in_memory_resolved"] == "no"  # streamed, evaluation too
    ck = torch.load(run / "last.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in ck["model"])  # the bare network: any number of ranks loads it
    pre = out / "pretrain"  # SimSiam through DDP
    assert len(rows(pre)) == 1 and math.isfinite(rows(pre)[0]["loss"])
    assert json.loads((pre / "summary.json").read_text())["train_images"] == 128


@pytest.mark.parametrize("method, options", ddp_check.TINY_RUNS)
def test_two_ranks_match_one_rank(two_ranks, data, tmp_path, monkeypatch, method, options):
    """Global batch 16 = 2 x 8 with --ddp-views global (the 1-process run's views) on the BatchNorm-free
    tiny_gn, 3 epochs of Adam. CE: the same run (loss and gradient norm within 1e-5 relative: float summation
    order; test accuracy equal). SCN: its rank regulariser ranks the importance weights within each rank's 8
    images instead of the 16 (a per-part batch statistic, as BatchNorm's), so its figures agree within a
    tolerance: loss within 3% relative (measured: 1.6%), relabelled shares within 0.15 (measured: equal), test
    accuracy within 1/8 after the last epoch (measured: equal) and within one class (0.25) at earlier ones,
    where the barely trained model's accuracy moves a class at a time."""
    monkeypatch.setitem(MODELS, ddp_check.TINY, MODELS.get(ddp_check.TINY))
    ddp_check.register_tiny(MODELS)
    one = tmp_path / "one"
    train(ddp_check.tiny_config(data, one, method, options), quiet=True)
    out, _ = two_ranks
    r1, r2 = rows(one), rows(out / f"{method}_tiny")
    assert len(r1) == len(r2) == 3 and r1[-1]["accuracy"] >= 0.5  # it learns: the comparison means something
    for x, y in zip(r1, r2):
        if method == "ce":
            for k in ("train_loss", "grad_norm_mean", "grad_norm_max"):
                assert y[k] == pytest.approx(x[k], rel=1e-5), (k, x[k], y[k])
            assert y["accuracy"] == x["accuracy"] and y["mean_class_accuracy"] == x["mean_class_accuracy"]
        else:
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=0.03)
            assert abs(y["accuracy"] - x["accuracy"]) <= 0.25  # one of the 4 classes (it learns them one by one)
            for k in ("relabelled_mean_flipped", "relabelled_mean_clean"):
                if k in x:
                    assert abs(y[k] - x[k]) <= 0.15, (k, x[k], y[k])
    if method != "ce":
        assert abs(r2[-1]["accuracy"] - r1[-1]["accuracy"]) <= 0.125


def _ranks_of(out: Path) -> dict[int, int]:
    """{rank: pid} of the torchrun workers training into `out` (from /proc: their RANK and command line)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = dict(x.split(b"=", 1) for x in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in x)
        except OSError:
            continue
        if str(out).encode() in cmd and b"RANK" in environ and b"TORCHELASTIC_RUN_ID" in environ:
            found[int(environ[b"RANK"])] = int(pid)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_stops_the_job_cleanly_and_resume_continues_with_one_process(tmp_path, data):
    """`torchrun ... -m robustfer train`: after the first finished epoch rank 1 is killed (SIGKILL). Rank 0
    stops with one line naming what happened and how to continue, torchrun exits non-zero, the run folder
    holds no temporary files and a loadable last.pt; `--resume` in ONE process finishes the run."""
    out = tmp_path / "run"
    cmd = LAUNCH + ["-m", "robustfer", "train", "--dataset", "folder", "--root", str(data), "--model", "compact_s",
                    "--input-size", "16", "--epochs", "20", "--batch-size", "32", "--device", "cpu",
                    "--select-split", "test", "--quiet", "--out", str(out)]
    job = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while not (out / "last.pt").exists():
            assert job.poll() is None, job.stdout.read()[-3000:]
            assert time.time() - t0 < 300, "no epoch finished in 300 s"
            time.sleep(0.2)
        ranks = _ranks_of(out)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        log, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert ("error: rank 0: another rank of this torchrun job stopped" in log
            or "interrupted: a train run continues" in log), log[-3000:]
    assert f'File "{ROOT}/robustfer/' not in log, log[-3000:]  # no traceback of ours (torchrun reports its own)
    assert not list(out.glob(".*tmp*")) and not (out / "summary.json").exists()
    done = torch.load(out / "last.pt", weights_only=False)["epoch"]
    assert 1 <= done < 20 and len(rows(out)) == done
    s = train(TrainConfig(dataset="", root="", out=str(out)), resume=True, quiet=True)
    assert s["epochs"] == 20 and [r["epoch"] for r in rows(out)] == list(range(20))
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 20


def test_methods_that_skip_the_unused_parameter_search_use_every_parameter(data):
    """Method.all_parameters_every_step lets DDP skip find_unused_parameters; a method declaring it must give
    every trainable parameter a gradient in warm-up and after it (a wrong True would hang or fail DDP)."""
    from robustfer.methods import METHODS

    for name in sorted(METHODS):
        if not method_class(name).all_parameters_every_step:
            continue
        options = {"warmup": 1} if "warmup" in method_class(name).__init__.__code__.co_varnames else {}
        run = Run(ddp_check.config(data, data / "unused", method=name, method_options=options), quiet=True)
        for epoch in (0, 2):
            run.state.epoch = epoch
            views, idx, mine, g = run.batch_views(torch.arange(32))
            run.model.zero_grad(set_to_none=True)
            loss, _ = run.step_loss(Batch(views=views, labels=run.labels[mine], index=mine, generator=g))
            loss.backward()
            unused = [n for n, p in run.model.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused, (name, epoch, unused)


def test_pretrain_objectives_use_every_parameter():
    from robustfer.methods.base import ViewSpec
    from robustfer.models import create_backbone, model_defaults
    from robustfer.pretrain import OBJECTIVES, create_objective

    for name, model in (("simsiam", "compact_s"), ("mae", "vit_s")):
        assert name in OBJECTIVES and OBJECTIVES[name].all_parameters_every_step
        size, ch = model_defaults(model)
        o = create_objective(name, create_backbone(model, ch), ViewSpec(size=size, channels=ch, recipe="pretrain"))
        loss, _ = o.loss(torch.randint(0, 255, (4, ch, size, size), dtype=torch.uint8), torch.Generator().manual_seed(0))
        loss.backward()
        assert not [n for n, p in o.named_parameters() if p.requires_grad and p.grad is None], name


def test_streamed_run_is_the_in_memory_run(tmp_path, data):
    """--data-in-memory no (each batch read from the memory-mapped cache, read-ahead thread) gives exactly the
    figures and weights of the in-memory run: the same order, batches and augmentation."""
    out = {}
    for mode in ("yes", "no"):
        out[mode] = tmp_path / mode
        train(ddp_check.config(data, out[mode], method="scn", noise="symmetric:0.3", data_in_memory=mode,
                               method_options={"warmup": 0}), quiet=True)
        assert json.loads((out[mode] / "config.json").read_text())["data_in_memory_resolved"] == mode
    strip = lambda h: [{k: v for k, v in r.items() if k != "images_per_s"} for r in h]  # noqa: E731
    assert strip(rows(out["yes"])) == strip(rows(out["no"]))
    a, b = (torch.load(out[m] / "last.pt", weights_only=False) for m in ("yes", "no"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_streamed_images_read_planned_batches_and_windows(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (50, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    view = take_rows(mm, np.arange(40, 0, -1))  # a subset of a memory map is not read yet
    assert isinstance(view, RowView) and view.shape == (40, 1, 4, 4) and view.nbytes == 40 * 16
    assert np.array_equal(np.array(view), arr[np.arange(40, 0, -1)]) and np.array_equal(view[3], arr[37])
    assert np.array_equal(view[3, 0, 1], arr[37, 0, 1]) and np.array_equal(view[[0, 2], 0], arr[[40, 38], 0])
    assert isinstance(view[5:9], RowView) and np.array_equal(np.asarray(view[5:9]), arr[35:31:-1])
    assert isinstance(take_rows(np.array(arr), [1, 2]), np.ndarray)  # an in-memory array is copied as before
    s = StreamedImages(view, torch.device("cpu"))
    keys = [torch.tensor([5, 1, 7]), torch.tensor([0, 39])]
    s.plan(keys)
    for k in keys + [torch.tensor([2])]:  # planned (read ahead) and unplanned batches
        assert torch.equal(s[k], torch.from_numpy(np.array(view)[k.numpy()]))
    assert torch.equal(s[10:13], torch.from_numpy(np.array(view)[10:13]))
    assert torch.equal(s.window(20, 30)[2:4], torch.from_numpy(np.array(view)[22:24]))
    s.close()


def test_place_images_chooses_by_free_memory(tmp_path, monkeypatch):
    import robustfer.data.stream as stream

    arr = np.zeros((100, 1, 8, 8), np.uint8)  # 6.4 kB
    monkeypatch.setattr(stream, "free_memory", lambda device: 20_000.0)  # half: 10 kB, per process
    assert place_images(arr, torch.device("cpu"), "auto", quiet=True)[1] == "yes"
    assert place_images(arr, torch.device("cpu"), "auto", share=2, quiet=True)[1] == "no"  # 5 kB each
    assert place_images(arr, torch.device("cpu"), "yes", share=2)[1] == "yes"
    with pytest.raises(RobustferError, match="--data-in-memory 'maybe'"):
        place_images(arr, torch.device("cpu"), "maybe")


def test_distributed_option_errors():
    d = Dist(0, 2, 0, torch.device("cpu"))
    with pytest.raises(RobustferError, match="--sync-bn needs CUDA"):
        d.wrap(torch.nn.BatchNorm1d(2), sync_bn=True)
    with pytest.raises(RobustferError, match="--batch-size 33 is the global batch of 2 ranks"):
        d.check_batch(33, 100)
    assert d.check_batch(64, 45) == 44 and d.steps(100, 32, drop_last=False) == 4 and d.steps(98, 32, False) == 3
