"""The command line: every error is one line and a non-zero exit; the main commands work end to end."""
import csv
import json
import subprocess
import sys


from robustfer.cli import main


def _err(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    assert rc != 0
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.err
    return lines[0]


def test_methods_lists_ce(capsys):
    assert main(["methods"]) == 0
    assert capsys.readouterr().out.startswith("ce ")


def test_data_summary_json(capsys, ferplus_root):
    assert main(["data", "summary", "--dataset", "ferplus", "--root", str(ferplus_root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["train"]["images"] == 25045 and s["test"]["per_class"]["contempt"] == 15
    assert s["train"]["votes"]["rows_in_label_csv"] == 28558


def test_noise_then_train_with_the_file_then_eval(capsys, tmp_path, ferplus_root):
    f = tmp_path / "n.csv"
    assert main(["noise", "--dataset", "ferplus", "--root", str(ferplus_root), "--type", "pair", "--rate", "0.2",
                 "--seed", "5", "--out", str(f)]) == 0
    rows = list(csv.DictReader(open(f)))
    assert list(rows[0]) == ["image", "clean_label", "noisy_label", "flipped"] and len(rows) == 25045
    flipped = [r for r in rows if r["flipped"] == "1"]
    assert 0.17 < len(flipped) / len(rows) < 0.23
    assert all(r["noisy_label"] == "disgust" for r in flipped if r["clean_label"] == "anger")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "ferplus", "--root", str(ferplus_root), "--method", "ce", "--out", str(run),
                 "--noise-file", str(f), "--epochs", "1", "--limit", "128", "--batch-size", "64",
                 "--eval-limit", "200", "--quiet"]) == 0
    assert "best on valid (epoch 0 of 0-0, as in metrics.jsonl)" in capsys.readouterr().out  # epochs count from 0 everywhere
    assert main(["eval", "--checkpoint", str(run), "--dataset", "ferplus", "--root", str(ferplus_root),
                 "--split", "test", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"last", "best"} and r["last"]["n"] == 3137
    assert len(r["last"]["confusion_matrix"]) == 8 and sum(map(sum, r["last"]["confusion_matrix"])) == 3137


def test_errors_are_one_line(capsys, tmp_path, ferplus_root):
    assert "does not exist" in _err(capsys, ["data", "summary", "--dataset", "rafdb", "--root", str(tmp_path / "x")])
    assert "unknown method" in _err(capsys, ["train", "--dataset", "ferplus", "--root", str(ferplus_root),
                                              "--method", "magic", "--out", str(tmp_path / "r")])
    assert "last.pt does not exist" in _err(capsys, ["eval", "--checkpoint", str(tmp_path), "--dataset", "ferplus",
                                                     "--root", str(ferplus_root)])
    assert "--noise 'sym'" in _err(capsys, ["train", "--dataset", "ferplus", "--root", str(ferplus_root),
                                            "--out", str(tmp_path / "r2"), "--noise", "sym"])
    assert "config.json" in _err(capsys, ["train", "--out", str(tmp_path / "none"), "--resume"])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nx.png,happy\n")
    assert "bad.csv" in _err(capsys, ["train", "--dataset", "ferplus", "--root", str(ferplus_root),
                                      "--out", str(tmp_path / "r3"), "--noise-file", str(bad)])


def test_console_script_error_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "robustfer", "data", "summary", "--dataset", "ferplus",
                        "--root", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "label.csv" in p.stderr
