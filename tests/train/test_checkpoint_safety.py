"""Checkpoints (issue 18, item 4): loading never runs code from a file (weights_only=True, tried with malicious
pickles through eval, predict, export, --init and --resume); every checkpoint carries robustfer's version and
a format number, and a newer format is refused in one line; a checkpoint of another class list is refused in
one line naming both lists (eval on other classes, --resume on a data set whose classes changed)."""
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustfer
from robustfer.cli import main
from robustfer.errors import RobustferError
from robustfer.models import create_backbone, load_init
from robustfer.train import TrainConfig, train
from robustfer.train.checkpoint import FORMAT, load_trained, plain


def _folder_data(root: Path, classes, n: int = 12, seed: int = 0) -> Path:
    """root/{train,test}/<class>/*.png: n random 48x48 grey images per class and split."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 1-epoch run on a 2-class folder data set, configured with Path objects (the Python API's
    habit: they must not leave pickled Paths in the checkpoint)."""
    base = tmp_path_factory.mktemp("ckpt")
    data = _folder_data(base / "data", ("happiness", "sadness"))
    torch.set_num_threads(1)
    train(TrainConfig(dataset="folder", root=data, out=base / "run", model="compact_s", epochs=1, batch_size=8,
                      threads=1, cache_dir=base / "cache"), quiet=True)
    return base / "run"


class Evil:
    """Unpickling it runs a shell command that creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _err(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_checkpoints_are_weights_only_loadable_and_stamped(run, tmp_path):
    from robustfer.infer.export import export_slim

    for name in ("last.pt", "best.pt"):
        ck = torch.load(run / name, weights_only=True)
        assert ck["format"] == FORMAT and ck["version"] == robustfer.__version__
        assert isinstance(ck["config"]["root"], str) and ck["classes"] == ["happiness", "sadness"]
    export_slim(run, tmp_path / "slim.pt")
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert slim["format"] == FORMAT and slim["kind"] == "model"


def test_plain_turns_paths_and_numpy_values_into_what_weights_only_accepts(tmp_path):
    raw = {"root": Path("/data"), "acc": np.float64(0.25), "n": np.int64(3), "v": np.arange(2), "x": float("nan"),
           "rows": [{"k": np.float32(0.5), "none": None}], "t": (1, 2)}
    torch.save(raw, tmp_path / "raw.pt")
    with pytest.raises(pickle.UnpicklingError):            # what the conversion is for
        torch.load(tmp_path / "raw.pt", weights_only=True)
    torch.save(plain(raw), tmp_path / "plain.pt")
    got = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert got["root"] == "/data" and got["acc"] == 0.25 and type(got["acc"]) is float and got["n"] == 3
    assert got["v"] == [0, 1] and np.isnan(got["x"]) and got["rows"] == [{"k": 0.5, "none": None}] and got["t"] == [1, 2]


def test_a_malicious_pickle_is_refused_everywhere_and_never_runs(run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ck = torch.load(run / "last.pt", weights_only=True)
    files = {"zip": tmp_path / "evil.pt", "robustfer": tmp_path / "evil_run.pt", "legacy": tmp_path / "evil_legacy.pt"}
    torch.save({"model": {}, "config": {}, "x": Evil(marker)}, files["zip"])
    torch.save({**ck, "history": [Evil(marker)]}, files["robustfer"])        # a real checkpoint with a payload
    with open(files["legacy"], "wb") as f:                                    # a bare pickle, torch's old format
        pickle.dump({"state_dict": Evil(marker)}, f, protocol=2)
    img = tmp_path / "face.png"
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(img)
    folder = _folder_data(tmp_path / "data", ("happiness", "sadness"), n=2)
    for kind, evil in files.items():
        resumable = tmp_path / f"resume_{kind}"
        shutil.copytree(run, resumable)
        shutil.copy(evil, resumable / "last.pt")
        data = ["--dataset", "folder", "--root", str(folder)]
        errs = [_err(capsys, ["eval", "--checkpoint", str(evil), *data]),
                _err(capsys, ["predict", "--checkpoint", str(evil), "--no-detect", str(img)]),
                _err(capsys, ["export", "--checkpoint", str(evil), "--format", "pt", "--out", str(tmp_path / "x.pt")]),
                _err(capsys, ["train", *data, "--init", str(evil), "--out", str(tmp_path / f"init_{kind}"), "--epochs", "1"]),
                _err(capsys, ["train", "--out", str(resumable), "--resume"])]
        for e in errs:
            assert str(evil.name) in e or "last.pt" in e, e
            if kind == "legacy":   # protocol 2: the unpickler meets the GLOBAL and refuses it
                assert "posix.system" in e or "nt.system" in e, e
            assert ("asks to build or call posix.system while loading" in e and "weights_only=True" in e
                    and "never runs code" in e), e
        assert not marker.exists(), kind
        assert not (tmp_path / "x.pt").exists() and not (tmp_path / f"init_{kind}" / "last.pt").exists()
    # the files really are malicious: PyTorch's unsafe loading runs the payload
    torch.load(files["zip"], weights_only=False)
    assert marker.exists()


def test_a_newer_checkpoint_format_is_refused_and_an_older_file_still_loads(run, tmp_path, capsys):
    ck = torch.load(run / "last.pt", weights_only=True)
    torch.save({**ck, "format": FORMAT + 1, "version": "9.0.0"}, tmp_path / "new.pt")
    old = {k: v for k, v in ck.items() if k not in ("format", "version")}         # before the numbers were stored
    torch.save(old, tmp_path / "old.pt")
    want = (f"was written by robustfer 9.0.0 in checkpoint format {FORMAT + 1}; this robustfer "
            f"{robustfer.__version__} reads formats up to {FORMAT}: upgrade robustfer")
    folder = ["--dataset", "folder", "--root", str(_folder_data(tmp_path / "data", ("happiness", "sadness"), n=2))]
    assert want in _err(capsys, ["eval", "--checkpoint", str(tmp_path / "new.pt"), *folder])
    with pytest.raises(RobustferError, match="checkpoint format 2"):
        load_init(create_backbone("compact_s"), tmp_path / "new.pt")
    resumable = tmp_path / "resume"
    shutil.copytree(run, resumable)
    shutil.copy(tmp_path / "new.pt", resumable / "last.pt")
    assert want in _err(capsys, ["train", "--out", str(resumable), "--resume"])
    model, _, classes, _ = load_trained(tmp_path / "old.pt")                       # format 0: read as before
    assert classes == ("happiness", "sadness")
    assert torch.equal(model.state_dict()["backbone.features.0.weight"], ck["model"]["backbone.features.0.weight"])
    # weights that do not fit this code's model: one line, not a load_state_dict traceback
    torch.save({**ck, "model": {("x" + k): v for k, v in ck["model"].items()}}, tmp_path / "other.pt")
    assert "does not fit this robustfer" in _err(capsys, ["eval", "--checkpoint", str(tmp_path / "other.pt"), *folder])


def test_another_class_list_is_refused_naming_both_lists(run, tmp_path, capsys):
    other = _folder_data(tmp_path / "other", ("happiness", "surprise"), n=2)
    err = _err(capsys, ["eval", "--checkpoint", str(run / "last.pt"), "--dataset", "folder", "--root", str(other)])
    assert "was trained on the classes ['happiness', 'sadness'], the data set" in err
    assert "has ['happiness', 'surprise'] (['surprise'] unknown to the model)" in err
    # --resume after the data set gained a class: the classifier's columns would no longer mean the same classes
    resumable = tmp_path / "resume"
    shutil.copytree(run, resumable)
    cfg = (resumable / "config.json").read_text()
    data = Path(robustfer.train.TrainConfig.load(resumable / "config.json").root)
    moved = _folder_data(tmp_path / "grown", ("happiness", "sadness"))
    (resumable / "config.json").write_text(cfg.replace(str(data), str(moved)))
    (moved / "train" / "anger").mkdir()
    shutil.copy(next((moved / "train" / "sadness").iterdir()), moved / "train" / "anger" / "0.png")
    (resumable / "summary.json").unlink()
    err = _err(capsys, ["train", "--out", str(resumable), "--resume"])
    assert ("was trained on the classes ['happiness', 'sadness'], the data set has ['anger', 'happiness', 'sadness']: "
            "resume on the data the run started with") in err
    # --init loads the backbone only: another class list does not matter there (the classifier is skipped)
    backbone = create_backbone("compact_s")
    load_init(backbone, run / "last.pt")
    ck = torch.load(run / "last.pt", weights_only=True)["model"]
    assert torch.equal(backbone.state_dict()["features.0.weight"], ck["backbone.features.0.weight"])
