"""Property-based tests (hypothesis): every valid label table of each csv reader round-trips exactly, any junk
cell or junk file gives a RobustferError (never another exception, never a wrong label on the rows it did not
touch), and the noise generators keep their promises (rates, seeds, the flip mask = given != clean)."""
from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from robustfer.data.affectnet import HEADER as AFFECTNET_HEADER
from robustfer.data.affectnet import load_affectnet, read_list
from robustfer.data.base import FERData
from robustfer.data.classes import AFFECTNET, FER2013, FERPLUS, RAFDB
from robustfer.data.fer2013 import load_fer2013
from robustfer.data.ferplus import load_ferplus, read_label_csv
from robustfer.data.noise import (
    PAIR_MAP, apply_noise, make_noise, pair_noise, read_noise_csv, symmetric_noise, uneven_noise, uneven_rates,
    write_noise_csv,
)
from robustfer.data.rafdb import load_rafdb, read_label_file
from robustfer.errors import RobustferError

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIDE = 8  # tiny images: the properties are about labels and pairing, not pixels

# file names with spaces, dots, dashes and non-ASCII letters, no surrounding spaces (readers strip them)
NAME_CHARS = "abcXYZ019 _-.éüß表情"
names_st = st.text(NAME_CHARS, min_size=1, max_size=12).map(lambda s: s.strip()).filter(bool)
newline_st = st.sampled_from(["\n", "\r\n"])
bom_st = st.booleans()


def write_csv(path: Path, rows: list[list[str]], newline: str = "\n", bom: bool = False) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=newline).writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))


def write_grey(path: Path, grey: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (SIDE, SIDE), grey).save(path, "PNG")


def greys_of(data) -> list[int]:
    return [int(np.asarray(im).max()) for im in data.images]


def only_robustfer_errors(fn):
    """fn() either returns or raises RobustferError with a one-line message; any other exception fails."""
    try:
        return fn()
    except RobustferError as e:
        assert "\n" not in str(e)
        return None


# ------------------------------------------------------------------ FERPlus label.csv

def majority(votes: list[int]) -> int | None:
    """The FERPlus majority rule written out: single votes dropped, the top class needs more than half of the
    rest; unknown / not-a-face / no majority -> None (dropped)."""
    kept = [v if v > 1 else 0 for v in votes]
    total = sum(kept)
    top = max(range(10), key=lambda i: kept[i])
    return top if kept[top] * 2 > total and top < 8 else None


votes_st = st.lists(st.integers(0, 10), min_size=10, max_size=10)
ferplus_table = st.lists(st.tuples(names_st, votes_st), min_size=1, max_size=10, unique_by=lambda r: r[0])


def ferplus_rows(table):
    return [[f"{name}.png", "(0, 0, 48, 48)", *map(str, votes)] for name, votes in table]


@SETTINGS
@given(table=ferplus_table, newline=newline_st, bom=bom_st)
def test_ferplus_vote_tables_round_trip(table, newline, bom):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        label = root / "FER2013Train" / "label.csv"
        write_csv(label, ferplus_rows(table), newline, bom)
        names, votes = read_label_csv(label)
        assert names == [f"{n}.png" for n, _ in table]
        assert votes.tolist() == [[float(v) for v in vs] for _, vs in table]
        for i, (name, _) in enumerate(table):
            write_grey(root / "FER2013Train" / f"{name}.png", i)
        want = {f"FER2013Train/{n}.png": (FERPLUS[majority(v)], i) for i, (n, v) in enumerate(table)
                if majority(v) is not None}
        data = only_robustfer_errors(lambda: load_ferplus(root, "train", size=SIDE, cache_dir=root / "cache"))
        if not want:  # every row dropped by the majority rule: an error, not an empty split
            assert data is None
            return
        assert data is not None, "a valid table must load"
        got = {f: (data.classes[y], g) for f, y, g in zip(data.files, data.labels, greys_of(data))}
        assert got == want
        assert np.array_equal(data.votes, np.asarray([v for _, v in table if majority(v) is not None], np.float32))


junk_st = st.text(min_size=0, max_size=20)


@SETTINGS
@given(table=ferplus_table, row=st.integers(0, 9), col=st.integers(0, 11), junk=junk_st)
def test_ferplus_junk_cell(table, row, col, junk):
    row %= len(table)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ferplus_rows(table)
        for i, r in enumerate(rows):
            write_grey(root / "FER2013Train" / r[0], i)
        rows[row][col] = junk
        write_csv(root / "FER2013Train" / "label.csv", rows)
        data = only_robustfer_errors(lambda: load_ferplus(root, "train", size=SIDE, cache_dir=root / "cache"))
        if data is not None:  # the junk was harmless (e.g. ' 3 ' as a vote): untouched rows read right
            want = {f"FER2013Train/{n}.png": FERPLUS[majority(v)] for i, (n, v) in enumerate(table)
                    if i != row and majority(v) is not None}
            got = {f: data.classes[y] for f, y in zip(data.files, data.labels)}
            assert {f: c for f, c in got.items() if f in want} == want


@SETTINGS
@given(blob=st.binary(max_size=200))
def test_ferplus_junk_file(blob):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "FER2013Train").mkdir()
        (root / "FER2013Train" / "label.csv").write_bytes(blob)
        only_robustfer_errors(lambda: load_ferplus(root, "train", size=SIDE, cache_dir=root / "cache"))


# ------------------------------------------------------------------ RAF-DB list_patition_label.txt

rafdb_table = st.lists(st.tuples(st.sampled_from(["train", "test"]), st.text("abc0123456789é", min_size=1, max_size=8),
                                 st.integers(1, 7), st.sampled_from([" ", "\t", "  ", " \t "])),
                       min_size=1, max_size=10, unique_by=lambda r: (r[0], r[1]))


@SETTINGS
@given(table=rafdb_table, newline=newline_st, bom=bom_st)
def test_rafdb_label_files_round_trip(table, newline, bom):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        label = root / "EmoLabel" / "list_patition_label.txt"
        label.parent.mkdir(parents=True)
        text = newline.join(f"{s}_{n}.jpg{sep}{i}" for s, n, i, sep in table) + newline
        label.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        rows = read_label_file(label)
        assert [(split, name, y) for _, split, name, y in rows] == [(s, f"{s}_{n}.jpg", i - 1) for s, n, i, _ in table]
        train = [(n, i, k) for k, (s, n, i, _) in enumerate(table) if s == "train"]
        for k, (s, n, _, _) in enumerate(table):
            write_grey(root / "Image" / "aligned" / f"{s}_{n}_aligned.jpg", 10 * k)  # PNG bytes; read by content
        data = only_robustfer_errors(lambda: load_rafdb(root, "train", size=SIDE, channels=1, cache_dir=root / "c"))
        if not train:
            assert data is None
            return
        assert data is not None, "a valid table must load"
        assert data.files == [f"Image/aligned/train_{n}_aligned.jpg" for n, _, _ in train]
        assert [RAFDB[y] for y in data.labels] == [RAFDB[i - 1] for _, i, _ in train]
        assert greys_of(data) == [10 * k for _, _, k in train]


@SETTINGS
@given(table=rafdb_table, row=st.integers(0, 9), junk=junk_st)
def test_rafdb_junk_label(table, row, junk):
    row %= len(table)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        label = root / "EmoLabel" / "list_patition_label.txt"
        label.parent.mkdir(parents=True)
        lines = [f"{s}_{n}.jpg {i}" for s, n, i, _ in table]
        lines[row] = f"{table[row][0]}_{table[row][1]}.jpg {junk}"
        label.write_text("\n".join(lines) + "\n", encoding="utf-8")
        rows = only_robustfer_errors(lambda: read_label_file(label))
        if rows is not None:
            got = {name: y for _, _, name, y in rows}
            for k, (s, n, i, _) in enumerate(table):
                if k != row and f"{s}_{n}.jpg" in got:
                    assert got[f"{s}_{n}.jpg"] == i - 1


@SETTINGS
@given(blob=st.binary(max_size=200))
def test_rafdb_junk_file(blob):
    with tempfile.TemporaryDirectory() as tmp:
        label = Path(tmp) / "list_patition_label.txt"
        label.write_bytes(blob)
        only_robustfer_errors(lambda: read_label_file(label))


# ------------------------------------------------------------------ AffectNet training.csv

box_st = st.none() | st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 30), st.integers(1, 30))
affectnet_table = st.lists(st.tuples(names_st, box_st, st.integers(0, 10)), min_size=1, max_size=10,
                           unique_by=lambda r: r[0])


def affectnet_rows(table, order, extra):
    header = [AFFECTNET_HEADER[i] for i in order] + [f"extra{j}" for j in range(extra)]
    rows = [header]
    for name, box, expr in table:
        cells = [f"{name}.jpg", *(map(str, box) if box else ["", "", "", ""]), "1.0;2.0", str(expr), "0.5", "-0.5"]
        rows.append([cells[i] for i in order] + ["x"] * extra)
    return rows


@SETTINGS
@given(table=affectnet_table, order=st.permutations(range(9)), extra=st.integers(0, 2), num_classes=st.sampled_from([7, 8]),
       newline=newline_st, bom=bom_st)
def test_affectnet_lists_round_trip_in_any_column_order(table, order, extra, num_classes, newline, bom):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training.csv"
        write_csv(path, affectnet_rows(table, order, extra), newline, bom)
        names, boxes, labels, _ = read_list(path, num_classes)
        kept = [(f"{n}.jpg", b, e) for n, b, e in table if e < num_classes]
        assert list(zip(names, boxes, labels)) == kept


@SETTINGS
@given(table=affectnet_table, row=st.integers(0, 9), col=st.integers(0, 8), junk=junk_st)
def test_affectnet_junk_cell(table, row, col, junk):
    row %= len(table)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = affectnet_rows(table, list(range(9)), 0)
        rows[row + 1][col] = junk
        write_csv(root / "Manually_Annotated_file_lists" / "training.csv", rows)
        for k, (n, _, _) in enumerate(table):
            write_grey(root / "Manually_Annotated_Images" / f"{n}.jpg", k)
        data = only_robustfer_errors(lambda: load_affectnet(root, "train", size=SIDE, channels=1, cache_dir=root / "c"))
        if data is not None:
            got = {f: data.classes[y] for f, y in zip(data.files, data.labels)}
            for k, (n, _, e) in enumerate(table):
                f = f"Manually_Annotated_Images/{n}.jpg"
                if k != row and f in got:
                    assert got[f] == AFFECTNET[e]


# ------------------------------------------------------------------ fer2013.csv

fer2013_table = st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["Training", "PublicTest", "PrivateTest"]),
                                   st.integers(0, 2**31 - 1)), min_size=1, max_size=6)
SPLIT_OF = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def fer2013_rows(table, order=(0, 1, 2)):
    header = ["emotion", "pixels", "Usage"]
    rows = [[header[i] for i in order]]
    for e, usage, seed in table:
        cells = [str(e), " ".join(map(str, face(seed).ravel())), usage]
        rows.append([cells[i] for i in order])
    return rows


@SETTINGS
@given(table=fer2013_table, order=st.permutations(range(3)), newline=newline_st, bom=bom_st)
def test_fer2013_csv_round_trips_in_any_column_order(table, order, newline, bom):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_csv(root / "fer2013.csv", fer2013_rows(table, order), newline, bom)
        for split in ("train", "val", "test"):
            want = [(i, e, seed) for i, (e, u, seed) in enumerate(table) if SPLIT_OF[u] == split]
            data = only_robustfer_errors(lambda: load_fer2013(root, split, cache_dir=root / "c"))
            if not want:
                assert data is None
                continue
            assert data is not None, "a valid table must load"
            assert data.files == [f"fer2013.csv#{i}" for i, _, _ in want]
            assert data.labels.tolist() == [e for _, e, _ in want]
            assert all(np.array_equal(img[0], face(seed)) for img, (_, _, seed) in zip(data.images, want))


@SETTINGS
@given(table=fer2013_table, row=st.integers(0, 5), col=st.integers(0, 2), junk=junk_st)
def test_fer2013_junk_cell(table, row, col, junk):
    row %= len(table)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = fer2013_rows(table)
        rows[row + 1][col] = junk
        write_csv(root / "fer2013.csv", rows)
        for split in ("train", "val", "test"):
            data = only_robustfer_errors(lambda: load_fer2013(root, split, cache_dir=root / "c"))
            if data is not None:
                for f, y in zip(data.files, data.labels):
                    i = int(f.split("#")[1])
                    if i != row:
                        assert y == table[i][0]


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_fer2013_junk_file(blob):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fer2013.csv").write_bytes(blob)
        only_robustfer_errors(lambda: load_fer2013(Path(tmp), "train", cache_dir=Path(tmp) / "c"))


# ------------------------------------------------------------------ the noise file

def toy(labels, classes=RAFDB) -> FERData:
    n = len(labels)
    return FERData(name="toy", split="train", classes=classes, images=np.zeros((n, 1, 2, 2), np.uint8),
                   labels=np.asarray(labels, np.int64), files=[f"img {i}/é{i}.png" for i in range(n)])


labels_and_noisy = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 6), min_size=n, max_size=n), st.lists(st.integers(0, 6), min_size=n, max_size=n)))


@SETTINGS
@given(ln=labels_and_noisy)
def test_noise_file_round_trips(ln):
    clean, noisy = ln
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noise.csv"
        data = toy(clean)
        write_noise_csv(path, data.files, data.classes, np.array(clean), np.array(noisy))
        back = read_noise_csv(path, data)
        assert back.labels.tolist() == noisy and back.clean_labels.tolist() == clean
        assert back.flipped.tolist() == [c != n for c, n in zip(clean, noisy)]


@SETTINGS
@given(ln=labels_and_noisy, row=st.integers(0, 29), col=st.integers(0, 3), junk=junk_st)
def test_noise_file_junk_cell(ln, row, col, junk):
    clean, noisy = ln
    row %= len(clean)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noise.csv"
        data = toy(clean)
        write_noise_csv(path, data.files, data.classes, np.array(clean), np.array(noisy))
        rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
        rows[row + 1][col] = junk
        write_csv(path, rows)
        back = only_robustfer_errors(lambda: read_noise_csv(path, data))
        if back is not None:
            assert back.clean_labels.tolist() == clean
            assert back.flipped.tolist() == (back.labels != back.clean_labels).tolist()


# ------------------------------------------------------------------ noise generators

def binomial_slack(p: np.ndarray) -> float:
    """6 standard deviations of a sum of Bernoulli(p_i) flips, plus 1: outside it by chance < 1e-8."""
    return 6 * math.sqrt(float(np.sum(p * (1 - p)))) + 1


seed_st = st.integers(0, 2**32 - 1)
classes_st = st.sampled_from([RAFDB, FERPLUS, AFFECTNET[:7], FER2013])
labels_st = classes_st.flatmap(lambda cls: st.tuples(st.just(cls), st.lists(st.integers(0, len(cls) - 1), min_size=1, max_size=400)))


@st.composite
def many_labels_st(draw):
    """(classes, 2,000..20,000 labels) with a drawn class balance: large enough that the 6-sigma band of the
    realised flip count is about 2 points of rate wide, so a generator off by a few points fails."""
    cls = draw(classes_st)
    weights = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=len(cls), max_size=len(cls))))
    rng = np.random.default_rng([draw(seed_st), 7])  # never the generators' own stream (seed 0 would correlate)
    return cls, rng.choice(len(cls), size=draw(st.integers(2000, 20000)), p=weights / weights.sum()).tolist()
rate_st = st.floats(0.0, 1.0, allow_nan=False)


@SETTINGS
@given(cl=many_labels_st(), rate=rate_st, seed=seed_st)
def test_symmetric_noise_promises(cl, rate, seed):
    classes, labels = cl
    y = np.array(labels, np.int64)
    noisy = symmetric_noise(y, len(classes), rate, seed)
    flipped = noisy != y
    assert noisy.dtype == np.int64 and noisy.shape == y.shape and noisy.min() >= 0 and noisy.max() < len(classes)
    assert abs(int(flipped.sum()) - rate * len(y)) <= binomial_slack(np.full(len(y), rate))
    assert np.array_equal(noisy, symmetric_noise(y, len(classes), rate, seed))
    if rate == 0:
        assert not flipped.any()
    if rate == 1:
        assert flipped.all()
    # a higher rate with the same seed only adds flips, to the same targets (comparable grids)
    higher = symmetric_noise(y, len(classes), min(1.0, rate + 0.2), seed)
    assert np.all((higher != y)[flipped]) and np.array_equal(higher[flipped], noisy[flipped])


@SETTINGS
@given(cl=many_labels_st(), rate=rate_st, seed=seed_st)
def test_pair_noise_promises(cl, rate, seed):
    classes, labels = cl
    y = np.array(labels, np.int64)
    try:
        noisy = pair_noise(y, classes, rate, seed)
    except RobustferError:  # a class list the published map does not cover
        assert any(PAIR_MAP.get(c) not in classes for c in classes)
        return
    flipped = noisy != y
    target = np.array([classes.index(PAIR_MAP[c]) for c in classes])
    assert np.array_equal(noisy[flipped], target[y[flipped]])
    assert abs(int(flipped.sum()) - rate * len(y)) <= binomial_slack(np.full(len(y), rate))
    assert np.array_equal(noisy, pair_noise(y, classes, rate, seed))


@SETTINGS
@given(cl=many_labels_st(), rate=st.floats(0.0, 0.99, allow_nan=False), seed=seed_st)
def test_uneven_noise_promises(cl, rate, seed):
    classes, labels = cl
    y = np.array(labels, np.int64)
    try:
        p = uneven_rates(y, classes, rate=rate)
    except RobustferError as e:  # only when the profile's classes are too rare for that rate
        assert "cannot reach" in str(e)
        base = uneven_rates(y, classes)
        assert rate * len(y) > np.sum(base[y] > 0) * (1 + 1e-12)
        return
    assert np.all((p >= 0) & (p <= 1))
    assert math.isclose(float(np.sum(p[y])), rate * len(y), rel_tol=1e-9, abs_tol=1e-9)  # the expected count, exactly
    noisy = uneven_noise(y, classes, seed=seed, rate=rate)
    flipped = noisy != y
    assert not flipped[p[y] == 0].any()
    assert abs(int(flipped.sum()) - rate * len(y)) <= binomial_slack(p[y])
    assert np.array_equal(noisy, uneven_noise(y, classes, seed=seed, rate=rate))


@SETTINGS
@given(cl=labels_st, kind=st.sampled_from(["symmetric", "pair", "uneven"]), rate=st.floats(0.1, 0.9), seed=seed_st)
def test_flip_mask_is_given_vs_clean(cl, kind, rate, seed):
    classes, labels = cl
    y = np.array(labels, np.int64)
    try:
        noisy, flipped = make_noise(y, classes, kind, rate, seed)
    except RobustferError:
        return  # a map or profile this class list cannot take (covered above)
    assert np.array_equal(flipped, noisy != y)
    data = apply_noise(toy(labels, classes), kind, rate, seed)
    assert np.array_equal(data.clean_labels, y) and np.array_equal(data.labels, noisy)
    assert np.array_equal(data.flipped, data.labels != data.clean_labels)
    again = apply_noise(data, kind, rate, seed)  # noise on noisy data starts from the kept clean labels
    assert np.array_equal(again.labels, noisy) and np.array_equal(again.clean_labels, y)


@SETTINGS
@given(labels=st.lists(st.integers(0, 6), min_size=200, max_size=400), kind=st.sampled_from(["symmetric", "pair"]),
       rate=st.floats(0.1, 0.9), seeds=st.tuples(seed_st, seed_st))
def test_different_seeds_differ(labels, kind, rate, seeds):
    assume(seeds[0] != seeds[1])
    y = np.array(labels, np.int64)
    a, _ = make_noise(y, RAFDB, kind, rate, seeds[0])
    b, _ = make_noise(y, RAFDB, kind, rate, seeds[1])
    assert not np.array_equal(a, b)  # equal by chance with probability <= 0.82^200
