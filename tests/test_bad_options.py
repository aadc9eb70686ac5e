"""Bad command-line options: one `error:` line on stderr, a non-zero exit, no traceback, and no run folder
or cache file left behind. Run in-process (robustfer.cli.main) on a tiny folder data set."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustfer.cli import main


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """root/{train,test}/{happy,sad}/*.png, 48x48 grey."""
    root = tmp_path_factory.mktemp("faces")
    for split in ("train", "test"):
        for c, g in (("happy", 40), ("sad", 200)):
            for i in range(4):
                p = root / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (48, 48), g + i).save(p)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTFER_CACHE", str(c))
    return c


def one_line_error(capsys, argv) -> str:
    """main(argv) fails with exactly one 'error: ' line on stderr (argparse's own errors included)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: usage errors exit here
        rc = e.code
    out = capsys.readouterr()
    assert rc not in (0, None), out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()] if folder.exists() else []


def _train(faces, out, *extra):
    return ["train", "--dataset", "folder", "--root", str(faces), "--out", str(out), "--quiet", "--device", "cpu",
            "--threads", "1", *extra]


TRAIN_BAD = [
    (["--epochs", "0"], "--epochs 0: must be positive"),
    (["--epochs", "-1"], "--epochs -1: must be positive"),
    (["--epochs", "2.5"], "invalid int value: '2.5'"),
    (["--epochs", "abc"], "invalid int value: 'abc'"),
    (["--batch-size", "0"], "--batch-size 0: must be positive"),
    (["--batch-size", "-3"], "--batch-size -3: must be positive"),
    (["--lr", "0"], "--lr 0.0: the learning rate must be a positive number"),
    (["--lr", "-0.1"], "--lr -0.1: the learning rate must be a positive number"),
    (["--lr", "nan"], "--lr nan: the learning rate must be a positive number"),
    (["--lr", "inf"], "--lr inf: the learning rate must be a positive number"),
    (["--limit", "0"], "--limit 0: must be positive"),
    (["--limit", "-5"], "--limit -5: must be positive"),
    (["--eval-limit", "0"], "--eval-limit 0: must be positive"),
    (["--offset", "-1"], "--offset -1: must be 0 or more"),
    (["--threads", "0"], "--threads 0: must be positive"),
    (["--input-size", "0"], "--input-size 0: must be positive"),
    (["--noise", "symmetric:1"], "--noise 'symmetric:1': the rate must lie in [0, 1)"),
    (["--noise", "symmetric:1.5"], "the rate must lie in [0, 1)"),
    (["--noise", "pair:-0.1"], "the rate must lie in [0, 1)"),
    (["--noise", "symmetric:nan"], "the rate must lie in [0, 1)"),
    (["--noise", "symmetric:abc"], "expected TYPE:RATE[:SEED]"),
    (["--noise", "symmetric"], "expected TYPE:RATE[:SEED]"),
    (["--noise", "gaussian:0.2"], "the type must be symmetric, pair or uneven"),
    (["--noise", "symmetric:0.2:x"], "expected TYPE:RATE[:SEED]"),
    (["--noise-file", "/nonexistent/n.csv"], "noise file /nonexistent/n.csv does not exist"),
    (["--method", "magic"], "unknown method"),
    (["--model", "resnet1000"], "resnet1000"),
    (["--eval-every", "0"], "--eval-every 0"),
    (["--holdout", "1.0"], "--holdout 1.0"),
    (["--ema", "1.5"], "--ema 1.5"),
    (["--train-split", "nope"], "nope"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
]


@pytest.mark.parametrize("extra, needle", TRAIN_BAD, ids=[" ".join(c[0]) for c in TRAIN_BAD])
def test_train_bad_option(extra, needle, faces, tmp_path, cache, capsys):
    out = tmp_path / "run"
    line = one_line_error(capsys, _train(faces, out, *extra))
    assert needle in line, line
    assert not out.exists() and not files_in(cache)


def test_train_noise_rate_zero_and_below_one_work(faces, tmp_path, cache, capsys):
    """The edges of [0, 1): 0 and 0.99 are valid rates (bench and noise agree)."""
    for rate in ("0", "0.99"):
        out = tmp_path / f"run{rate}"
        assert main(_train(faces, out, "--noise", f"symmetric:{rate}", "--epochs", "1", "--batch-size", "4")) == 0
        assert (out / "summary.json").is_file()


def _not_a_checkpoint(tmp_path: Path) -> dict[str, Path]:
    """--init inputs that are not checkpoints of this model."""
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    png = tmp_path / "face.pth"
    Image.new("L", (4, 4)).save(png, "PNG")
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, foreign)
    folder = tmp_path / "empty_run"
    folder.mkdir()
    return {"text": text, "zero-byte": empty, "png": png, "list": other, "foreign-state-dict": foreign,
            "empty-folder": folder, "missing": tmp_path / "missing.pt"}


UNREADABLE = r"cannot be read|is not a readable"
INIT_NEEDLES = {"text": UNREADABLE, "zero-byte": UNREADABLE, "png": UNREADABLE, "list": UNREADABLE + "|no state_dict",
                "foreign-state-dict": "does not fit this model", "empty-folder": "does not exist",
                "missing": "does not exist"}


@pytest.mark.parametrize("kind", list(INIT_NEEDLES))
def test_train_init_that_is_not_a_checkpoint(kind, faces, tmp_path, cache, capsys):
    bad = _not_a_checkpoint(tmp_path)[kind]
    out = tmp_path / "run"
    line = one_line_error(capsys, _train(faces, out, "--init", str(bad), "--epochs", "1"))
    assert str(bad) in line and "--init" in line and re.search(INIT_NEEDLES[kind], line), line
    assert not out.exists()


@pytest.mark.parametrize("state", ["empty-folder", "no-folder", "config-only", "corrupt-config", "corrupt-last"])
def test_train_resume_without_a_run(state, faces, tmp_path, cache, capsys):
    out = tmp_path / "run"
    if state != "no-folder":
        out.mkdir()
    if state in ("config-only", "corrupt-last"):
        (out / "config.json").write_text(json.dumps({"dataset": "folder", "root": str(faces), "out": str(out)}))
    if state == "corrupt-config":
        (out / "config.json").write_text("{not json")
    if state == "corrupt-last":
        (out / "last.pt").write_bytes(b"\x80\x04 truncated")
    before = sorted(files_in(out))
    line = one_line_error(capsys, ["train", "--out", str(out), "--resume"])
    assert str(out) in line, line
    assert sorted(files_in(out)) == before  # nothing written into the folder
    assert not out.exists() or state != "no-folder"


def test_train_into_a_folder_holding_a_run_is_refused(faces, tmp_path, cache, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    line = one_line_error(capsys, _train(faces, out, "--epochs", "1"))
    assert "already holds a run" in line and "--resume" in line


NOISE_BAD = [("1", "--rate 1.0: the noise rate must lie in [0, 1)"), ("1.5", "[0, 1)"), ("-0.1", "[0, 1)"),
             ("nan", "[0, 1)"), ("x", "invalid float value: 'x'")]


@pytest.mark.parametrize("rate, needle", NOISE_BAD, ids=[c[0] for c in NOISE_BAD])
def test_noise_command_bad_rate(rate, needle, faces, tmp_path, cache, capsys):
    out = tmp_path / "n.csv"
    line = one_line_error(capsys, ["noise", "--dataset", "folder", "--root", str(faces), "--type", "symmetric",
                                   "--rate", rate, "--out", str(out)])
    assert needle in line, line
    assert not out.exists() and not files_in(cache)


PRETRAIN_BAD = [(["--epochs", "0"], "need epochs >= 1"), (["--batch-size", "1"], "batch size >= 2"),
                (["--lr", "-1"], "lr > 0"), (["--objective", "magic"], "invalid choice: 'magic'")]


@pytest.mark.parametrize("extra, needle", PRETRAIN_BAD, ids=[" ".join(c[0]) for c in PRETRAIN_BAD])
def test_pretrain_bad_option(extra, needle, faces, tmp_path, cache, capsys):
    out = tmp_path / "pre"
    argv = ["pretrain", "--dataset", "folder", "--root", str(faces), "--out", str(out), "--quiet", "--device", "cpu",
            "--objective", "simsiam", *extra]
    line = one_line_error(capsys, argv)
    assert needle in line, line
    assert not out.exists() and not files_in(cache)


def test_pretrain_resume_on_an_empty_folder(tmp_path, cache, capsys):
    out = tmp_path / "pre"
    out.mkdir()
    line = one_line_error(capsys, ["pretrain", "--out", str(out), "--resume"])
    assert str(out) in line and not files_in(out)


@pytest.mark.parametrize("extra, needle", [
    (["--epochs", "0"], "--epochs 0: must be positive"),
    (["--batch-size", "-1"], "--batch-size -1: must be positive"),
    (["--noise", "0.1,1.0"], "the rate must lie in [0, 1)"),
    (["--seeds", "1,x"], "x"),
], ids=["epochs-0", "batch-negative", "noise-1", "seed-not-int"])
def test_bench_bad_option(extra, needle, faces, tmp_path, cache, capsys):
    out = tmp_path / "grid"
    line = one_line_error(capsys, ["bench", "--dataset", "folder", "--root", str(faces), "--out", str(out),
                                   "--dry-run", "--no-live", *extra])
    assert needle in line, line
    assert not files_in(out)


@pytest.mark.parametrize("argv", [["trian"], ["data"], ["train"], ["eval", "--dataset", "folder"],
                                  ["noise", "--dataset", "nope", "--root", ".", "--type", "pair", "--rate", "0.1",
                                   "--out", "x.csv"]],
                         ids=["misspelt-command", "missing-sub-command", "train-without-out", "eval-missing-options",
                              "unknown-dataset"])
def test_usage_errors_are_one_line(argv, capsys):
    line = one_line_error(capsys, argv)
    assert "--help" in line
