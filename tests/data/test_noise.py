"""Synthetic noise (methods.md section 7) and the noise csv of interface.md."""
from __future__ import annotations

import csv
import random

import numpy as np
import pytest

from robustfer.data.base import FERData
from robustfer.data.classes import FERPLUS, RAFDB
from robustfer.data.noise import (
    apply_noise, make_noise, pair_noise, read_noise_csv, symmetric_noise, uneven_noise,
    uneven_rates, write_noise_csv,
)
from robustfer.errors import RobustferError

N = 20_000


def balanced(num_classes: int, n: int = N, seed: int = 123) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes).astype(np.int64)


def make_data(classes=RAFDB, n: int = 40, soft: bool = False) -> FERData:
    labels = balanced(len(classes), n, seed=7)
    return FERData(
        name="toy", split="train", classes=classes, images=np.zeros((n, 1, 4, 4), np.uint8), labels=labels,
        files=[f"train/img_{i:03d}.png" for i in range(n)],
        soft=np.eye(len(classes), dtype=np.float32)[labels] if soft else None,
        extra={"label_mode": "majority"},
    )


# ---------------------------------------------------------------- symmetric

@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.5])
def test_symmetric_realised_rate(rate):
    y = balanced(7)
    noisy = symmetric_noise(y, 7, rate, seed=1)
    assert noisy.dtype == np.int64 and noisy.shape == y.shape
    assert abs((noisy != y).mean() - rate) < 0.01


def test_symmetric_rate_zero_and_one():
    y = balanced(7, 1000)
    assert np.array_equal(symmetric_noise(y, 7, 0.0, seed=1), y)
    assert (symmetric_noise(y, 7, 1.0, seed=1) != y).all()  # rate 1: every label moves, never onto itself


def test_symmetric_targets_uniform_over_other_classes():
    c = 7
    y = np.full(N, 3, np.int64)  # one source class: its flips must spread evenly over the 6 others
    noisy = symmetric_noise(y, c, 1.0, seed=2)
    counts = np.bincount(noisy, minlength=c)
    assert counts[3] == 0
    others = counts[np.arange(c) != 3]
    expected = N / (c - 1)
    chi2 = ((others - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # chi-square, 5 dof, p ~ 0.001
    # and for every source class on mixed labels
    y = balanced(c)
    noisy = symmetric_noise(y, c, 0.5, seed=3)
    for k in range(c):
        moved = noisy[(y == k) & (noisy != y)]
        freq = np.bincount(moved, minlength=c) / len(moved)
        assert freq[k] == 0
        assert np.allclose(np.delete(freq, k), 1 / (c - 1), atol=0.03)


def test_symmetric_seed_determinism():
    y = balanced(8)
    a = symmetric_noise(y, 8, 0.3, seed=5)
    assert np.array_equal(a, symmetric_noise(y, 8, 0.3, seed=5))
    assert not np.array_equal(a, symmetric_noise(y, 8, 0.3, seed=6))
    assert np.array_equal(y, balanced(8))  # input untouched


# ---------------------------------------------------------------- pair

# LA-Net `_add_class_dependent_noise` (methods.md section 7), written out: its dict in LA-Net's own class
# order, then by name; contempt -> disgust is robustfer's documented addition for FERPlus/AffectNet.
LANET_ORDER = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
LANET_TRANS = {0: 1, 1: 0, 2: 5, 3: 6, 4: 6, 5: 0, 6: 4}
PUBLISHED_PAIRS = {"anger": "disgust", "disgust": "anger", "fear": "surprise", "happiness": "neutral",
                   "sadness": "neutral", "surprise": "anger", "neutral": "sadness"}


def test_published_pair_map_is_lanet_translated_by_name():
    assert {LANET_ORDER[a]: LANET_ORDER[b] for a, b in LANET_TRANS.items()} == PUBLISHED_PAIRS


@pytest.mark.parametrize("classes", [RAFDB, FERPLUS], ids=["rafdb", "ferplus"])
def test_pair_map_by_name(classes):
    idx = {c: i for i, c in enumerate(classes)}
    y = balanced(len(classes))
    noisy = pair_noise(y, classes, 1.0, seed=0)
    assert (noisy != y).all()
    want = {**PUBLISHED_PAIRS, "contempt": "disgust"}
    got = {c: {classes[t] for t in np.unique(noisy[y == idx[c]])} for c in classes}
    assert got == {c: {want[c]} for c in classes}


def test_pair_rafdb_and_ferplus_agree_by_name():
    # same images labelled in two class orders must get the same noisy NAMES with the same seed
    names = [RAFDB[i] for i in balanced(7)]
    y_raf = np.array([RAFDB.index(n) for n in names])
    y_fp = np.array([FERPLUS.index(n) for n in names])
    a = [RAFDB[i] for i in pair_noise(y_raf, RAFDB, 0.4, seed=9)]
    b = [FERPLUS[i] for i in pair_noise(y_fp, FERPLUS, 0.4, seed=9)]
    assert a == b


def test_pair_realised_rate_and_contempt():
    y = balanced(8)
    noisy = pair_noise(y, FERPLUS, 0.2, seed=4)
    assert abs((noisy != y).mean() - 0.2) < 0.01
    contempt, disgust = FERPLUS.index("contempt"), FERPLUS.index("disgust")
    moved = noisy[(y == contempt) & (noisy != y)]
    assert len(moved) > 0 and (moved == disgust).all()


def test_pair_missing_target_is_error():
    with pytest.raises(RobustferError, match="disgust"):
        pair_noise(np.array([0, 1]), ("anger", "happiness", "neutral", "sadness"), 0.2, seed=0)
    with pytest.raises(RobustferError, match="tired"):
        pair_noise(np.array([0, 1]), ("neutral", "sadness", "tired"), 0.2, seed=0)


# ---------------------------------------------------------------- uneven

# ReSup's uneven profile (purpleleaves007/FERDenoise RAFlabel/usnoise_train1.txt; methods.md section 7), written out
RESUP_RATES = {"fear": 0.5, "sadness": 0.4, "disgust": 0.3, "anger": 0.2, "surprise": 0.1,
               "happiness": 0.0, "neutral": 0.0}
# RAF-DB basic train set per class (12,271 images): the file's 11.55% overall comes from these counts
RAFDB_TRAIN_COUNTS = {"surprise": 1290, "fear": 281, "disgust": 717, "happiness": 4772, "sadness": 1982,
                      "anger": 705, "neutral": 2524}


def test_uneven_default_profile_is_resups():
    y = np.repeat(np.arange(7), [RAFDB_TRAIN_COUNTS[c] for c in RAFDB])
    rates = uneven_rates(y, RAFDB)
    assert dict(zip(RAFDB, rates.tolist())) == RESUP_RATES
    assert rates[y].mean() == pytest.approx(0.1155, abs=2e-4)   # the file's overall rate on RAF-DB train
    assert uneven_rates(balanced(8, 80), FERPLUS)[FERPLUS.index("contempt")] == 0.0


def test_uneven_default_profile_per_class_rates():
    y = balanced(7, 70_000)
    noisy = uneven_noise(y, RAFDB, None, seed=11)
    for k, name in enumerate(RAFDB):
        realised = (noisy[y == k] != k).mean()
        assert abs(realised - RESUP_RATES[name]) < 0.015, name
    assert (noisy[y == RAFDB.index("happiness")] == RAFDB.index("happiness")).all()
    assert (noisy[y == RAFDB.index("neutral")] == RAFDB.index("neutral")).all()
    # targets uniform over the other classes
    fear = RAFDB.index("fear")
    moved = noisy[(y == fear) & (noisy != y)]
    freq = np.bincount(moved, minlength=7) / len(moved)
    assert freq[fear] == 0 and np.allclose(np.delete(freq, fear), 1 / 6, atol=0.02)


def test_uneven_ferplus_contempt_zero_and_custom_rates():
    y = balanced(8)
    noisy = uneven_noise(y, FERPLUS, None, seed=1)
    assert (noisy[y == FERPLUS.index("contempt")] == FERPLUS.index("contempt")).all()
    noisy = uneven_noise(y, FERPLUS, {"Happy": 0.5}, seed=1)  # aliases accepted, others 0
    hap = FERPLUS.index("happiness")
    assert abs((noisy[y == hap] != hap).mean() - 0.5) < 0.03
    assert (noisy[y != hap] == y[y != hap]).all()
    with pytest.raises(RobustferError, match="bored"):
        uneven_noise(y, FERPLUS, {"bored": 0.2}, seed=1)


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.4])
def test_uneven_rescaled_expected_rate(rate):
    y = balanced(7)
    per_class = uneven_rates(y, RAFDB, None, rate)
    expected = per_class[y].mean()
    assert expected == pytest.approx(rate, abs=1e-12)
    assert per_class.max() <= 1.0
    # profile shape kept among unclipped classes: fear/sadness = 0.5/0.4
    if per_class.max() < 1.0:
        assert per_class[RAFDB.index("fear")] / per_class[RAFDB.index("sadness")] == pytest.approx(1.25)
    noisy = uneven_noise(y, RAFDB, None, seed=3, rate=rate)
    assert abs((noisy != y).mean() - rate) < 0.01


def test_uneven_rescale_clips_and_rejects_unreachable():
    y = balanced(7)
    per_class = uneven_rates(y, RAFDB, None, 0.6)  # needs fear (and more) clipped at 1
    assert per_class[RAFDB.index("fear")] == 1.0
    assert per_class[y].mean() == pytest.approx(0.6, abs=1e-12)
    with pytest.raises(RobustferError, match="cannot reach"):
        uneven_rates(y, RAFDB, None, 0.9)  # happiness + neutral (2/7) never flip


def test_uneven_seed_determinism():
    y = balanced(7)
    a = uneven_noise(y, RAFDB, None, seed=1)
    assert np.array_equal(a, uneven_noise(y, RAFDB, None, seed=1))
    assert not np.array_equal(a, uneven_noise(y, RAFDB, None, seed=2))


# ---------------------------------------------------------------- make_noise / apply_noise

@pytest.mark.parametrize("kind", ["symmetric", "pair", "uneven"])
def test_make_noise_mask_and_determinism(kind):
    y = balanced(7)
    noisy, flipped = make_noise(y, RAFDB, kind, 0.2, seed=8)
    assert flipped.dtype == bool
    assert np.array_equal(flipped, noisy != y)
    assert abs(flipped.mean() - 0.2) < 0.01
    again, _ = make_noise(y, RAFDB, kind, 0.2, seed=8)
    other, _ = make_noise(y, RAFDB, kind, 0.2, seed=9)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)


def test_make_noise_uneven_without_rate_is_resup_profile():
    y = balanced(7)
    noisy, _ = make_noise(y, RAFDB, "uneven", None, seed=1)
    assert np.array_equal(noisy, uneven_noise(y, RAFDB, None, seed=1))


@pytest.mark.parametrize("kind,rate", [("gaussian", 0.2), ("symmetric", 1.5), ("pair", -0.1),
                                       ("symmetric", float("nan")), ("symmetric", None)])
def test_make_noise_bad_arguments(kind, rate):
    with pytest.raises(RobustferError) as e:
        make_noise(balanced(7, 10), RAFDB, kind, rate, seed=0)
    assert "\n" not in str(e.value)


def test_apply_noise_copy():
    data = make_data(FERPLUS, n=400, soft=True)
    orig = data.labels.copy()
    noisy = apply_noise(data, "symmetric", 0.3, seed=1)
    assert np.array_equal(data.labels, orig) and data.clean_labels is None  # original untouched
    assert np.array_equal(noisy.clean_labels, orig)
    assert np.array_equal(noisy.flipped, noisy.labels != orig)
    assert 0.2 < noisy.flipped.mean() < 0.4
    assert np.array_equal(noisy.soft.argmax(1), noisy.labels)  # soft targets follow the flips
    assert noisy.files == data.files and noisy.images is data.images
    assert noisy.extra["noise"] == {"type": "symmetric", "rate": 0.3, "seed": 1}
    assert "noise" not in data.extra
    # re-noising starts from the truth, not from the already-noisy labels
    twice = apply_noise(noisy, "symmetric", 0.3, seed=1)
    assert np.array_equal(twice.clean_labels, orig) and np.array_equal(twice.labels, noisy.labels)


# ---------------------------------------------------------------- csv

def write_for(data: FERData, path, kind="symmetric", rate=0.3, seed=2):
    noisy, _ = make_noise(data.labels, data.classes, kind, rate, seed)
    write_noise_csv(path, data.files, data.classes, data.labels, noisy)
    return noisy


def test_csv_format_exact(tmp_path):
    path = tmp_path / "sub" / "noise.csv"
    write_noise_csv(path, ["a/x.png", "b/y.png"], RAFDB, np.array([0, 3]), np.array([0, 6]))
    assert path.read_text() == (
        "image,clean_label,noisy_label,flipped\n"
        "a/x.png,surprise,surprise,0\n"
        "b/y.png,happiness,neutral,1\n"
    )
    assert [p.name for p in path.parent.iterdir()] == ["noise.csv"]  # no temp file left behind


def test_csv_round_trip_and_order_independent(tmp_path):
    data = make_data(RAFDB, n=60)
    path = tmp_path / "noise.csv"
    noisy = write_for(data, path)
    back = read_noise_csv(path, data)
    assert np.array_equal(back.labels, noisy)
    assert np.array_equal(back.clean_labels, data.labels)
    assert np.array_equal(back.flipped, noisy != data.labels)
    assert back.flipped.dtype == bool and back.labels.dtype == np.int64
    assert back.extra["noise"] == {"file": str(path)}

    lines = path.read_text().splitlines()
    body = lines[1:]
    random.Random(0).shuffle(body)
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + body) + "\n")
    again = read_noise_csv(shuffled, data)
    assert np.array_equal(again.labels, noisy)
    assert np.array_equal(again.flipped, back.flipped)

    # the same file read against the data set in another order matches by path
    perm = np.random.default_rng(0).permutation(len(data))
    sub = data.subset(perm)
    other = read_noise_csv(path, sub)
    assert np.array_equal(other.labels, noisy[perm])


def test_csv_matches_apply_noise(tmp_path):
    data = make_data(FERPLUS, n=80)
    applied = apply_noise(data, "pair", 0.4, seed=3)
    path = tmp_path / "n.csv"
    write_noise_csv(path, applied.files, applied.classes, applied.clean_labels, applied.labels)
    back = read_noise_csv(path, data)
    assert np.array_equal(back.labels, applied.labels) and np.array_equal(back.flipped, applied.flipped)


def rewrite(path, edit):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _flip_row(rows, i, col, value):
    rows[i][col] = value
    return rows


def _other(name, classes=RAFDB):
    return classes[(classes.index(name) + 1) % len(classes)]


ERRORS = {
    "header": (lambda r: [["img", "clean", "noisy", "flipped"]] + r[1:], "header"),
    "columns": (lambda r: r[:3] + [r[3][:3]] + r[4:], "3 columns, expected 4"),
    "unknown class": (lambda r: _flip_row(r, 2, 2, "bored"), "unknown noisy_label 'bored'"),
    "not in data": (lambda r: _flip_row(r, 2, 0, "train/elsewhere.png"), "not in toy train"),
    "missing images": (lambda r: r[:-2], "missing from the file"),
    "duplicate": (lambda r: r + [r[1]], "listed twice"),
    "flipped inconsistent": (lambda r: _flip_row(r, 1, 3, "0" if r[1][3] == "1" else "1"), "flipped is"),
    "flipped not 0/1": (lambda r: _flip_row(r, 1, 3, "yes"), "0 or 1"),
    "clean disagrees": (lambda r: [r[0]] + [[r[1][0], _other(r[1][1]), _other(r[1][1]), "0"]] + r[2:],
                        "another label mode or data set"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_csv_errors(tmp_path, case):
    data = make_data(RAFDB, n=20)
    path = tmp_path / "bad_noise.csv"
    write_for(data, path)
    edit, needle = ERRORS[case]
    rewrite(path, edit)
    with pytest.raises(RobustferError) as e:
        read_noise_csv(path, data)
    msg = str(e.value)
    assert "bad_noise.csv" in msg and needle in msg and "\n" not in msg
    assert "robustfer noise" in msg  # the fix


def test_csv_line_numbers(tmp_path):
    data = make_data(RAFDB, n=20)
    path = tmp_path / "n.csv"
    write_for(data, path)
    rewrite(path, lambda r: _flip_row(r, 5, 1, "bored"))
    with pytest.raises(RobustferError, match=r"n\.csv line 6: unknown clean_label 'bored'"):
        read_noise_csv(path, data)


def test_csv_missing_and_empty_file(tmp_path):
    data = make_data(RAFDB, n=5)
    with pytest.raises(RobustferError, match="nope.csv does not exist"):
        read_noise_csv(tmp_path / "nope.csv", data)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(RobustferError, match="empty.csv line 1: header"):
        read_noise_csv(empty, data)


def test_csv_other_data_set_label_order(tmp_path):
    # a file written for FERPlus names classes fine but the data set's own labels disagree
    fp = make_data(FERPLUS, n=16)
    path = tmp_path / "fp.csv"
    write_for(fp, path, rate=0.0)
    raf = make_data(RAFDB, n=16)
    with pytest.raises(RobustferError, match="fp.csv line .*(another label mode or data set|unknown)"):
        read_noise_csv(path, raf)


def test_write_length_mismatch(tmp_path):
    with pytest.raises(RobustferError, match="x.csv"):
        write_noise_csv(tmp_path / "x.csv", ["a.png"], RAFDB, np.array([0, 1]), np.array([0, 1]))
    assert not (tmp_path / "x.csv").exists()
