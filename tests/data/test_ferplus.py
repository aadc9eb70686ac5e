import shutil

import numpy as np
import pytest
from PIL import Image

from robustfer.data import load_dataset
from robustfer.data.ferplus import process_votes
from robustfer.errors import RobustferError


def test_real_splits_and_counts(ferplus_root):
    d = load_dataset("ferplus", ferplus_root, "train")
    assert len(d) == 25045 and d.images.shape == (25045, 1, 48, 48) and d.images.dtype == np.uint8
    assert d.class_counts().tolist() == [8733, 7284, 3136, 3022, 2098, 116, 536, 120]
    assert len(load_dataset("ferplus", ferplus_root, "valid")) == 3191
    assert len(load_dataset("ferplus", ferplus_root, "test")) == 3137
    # raw votes kept: the label is the majority class of the raw votes
    assert d.votes.shape == (25045, 10)
    assert np.all(d.votes[:, :8].argmax(1) == d.labels)
    # fer0000000 has votes 4,0,0,1,3,2,...: no majority once single votes are dropped
    assert d.files[0] == "FER2013Train/fer0000001.png"


def test_first_image_matches_png(ferplus_root):
    d = load_dataset("ferplus", ferplus_root, "train")
    png = np.asarray(Image.open(ferplus_root / d.files[5]).convert("L"))
    assert np.array_equal(d.images[5, 0], png)


def test_second_load_is_memory_mapped(ferplus_root):
    load_dataset("ferplus", ferplus_root, "test")
    d = load_dataset("ferplus", ferplus_root, "test")
    assert isinstance(d.images, np.memmap)


@pytest.mark.parametrize("votes,mode,expected", [
    # single votes are outliers: 6 of the remaining 9 > half -> neutral
    ([6, 0, 0, 1, 3, 0, 0, 0, 0, 0], "majority", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    # 4 of 9 remaining votes is not more than half -> unknown (the reader drops it)
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "majority", [0] * 8 + [1, 0]),
    # no class above half -> unknown
    ([3, 3, 0, 0, 2, 2, 0, 0, 0, 0], "majority", [0] * 8 + [1, 0]),
    # probability: top classes until >= 75% of the 9 kept votes: 4 + 3 = 7 >= 6.75
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "probability", [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0, 0, 0]),
    # tied top classes enter together: 3 + 3 = 6 >= 0.75 * 8
    ([3, 0, 3, 0, 2, 1, 1, 0, 0, 0], "crossentropy", [0.5, 0, 0.5, 0, 0, 0, 0, 0, 0, 0]),
    # four classes needed -> more than 3 -> unknown
    ([3, 0, 3, 0, 2, 2, 0, 0, 0, 0], "probability", [0] * 8 + [1, 0]),
    # multi_target keeps classes with >= 30% of the votes (4/9 and 3/9)
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "multi_target", [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0, 0, 0]),
    # majority class is not-a-face -> the reader drops it (argmax index 9)
    ([0, 0, 0, 0, 0, 0, 0, 0, 2, 8], "majority", [0] * 9 + [1]),
])
def test_vote_processing_follows_microsoft(votes, mode, expected):
    assert process_votes([float(v) for v in votes], mode) == pytest.approx(expected)


def test_label_modes_change_soft_targets(ferplus_root):
    maj = load_dataset("ferplus", ferplus_root, "test")
    ce = load_dataset("ferplus", ferplus_root, "test", label_mode="crossentropy")
    assert np.all(maj.soft.max(1) == 1.0)
    assert np.any(ce.soft.max(1) < 1.0)
    np.testing.assert_allclose(ce.soft.sum(1), 1.0, rtol=1e-6)


def _fixture(tmp_path, ferplus_root, n=5):
    """A small FERPlus-layout copy: first n rows of the real test split."""
    root = tmp_path / "fp"
    (root / "FER2013Test").mkdir(parents=True)
    rows = (ferplus_root / "FER2013Test" / "label.csv").read_text().splitlines()[:n]
    (root / "FER2013Test" / "label.csv").write_text("\n".join(rows) + "\n")
    for r in rows:
        name = r.split(",")[0]
        shutil.copy(ferplus_root / "FER2013Test" / name, root / "FER2013Test" / name)
    return root, rows


def test_wrong_columns_names_file_and_line(tmp_path, ferplus_root):
    root, rows = _fixture(tmp_path, ferplus_root)
    (root / "FER2013Test" / "label.csv").write_text(rows[0] + "\nfer1.png,1,2\n")
    with pytest.raises(RobustferError, match=r"label.csv line 2: expected 12 columns"):
        load_dataset("ferplus", root, "test", cache_dir=tmp_path / "c")


def test_missing_and_corrupt_image_leave_no_cache(tmp_path, ferplus_root):
    root, rows = _fixture(tmp_path, ferplus_root)
    first = root / "FER2013Test" / rows[0].split(",")[0]
    first.write_bytes(b"not a png")
    with pytest.raises(RobustferError, match=r"corrupt image .*" + first.name):
        load_dataset("ferplus", root, "test", cache_dir=tmp_path / "c")
    first.unlink()
    with pytest.raises(RobustferError, match=r"missing image .*" + first.name):
        load_dataset("ferplus", root, "test", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*")) if (tmp_path / "c").exists() else True


def test_changed_file_invalidates_cache(tmp_path, ferplus_root):
    root, rows = _fixture(tmp_path, ferplus_root)
    a = load_dataset("ferplus", root, "test", cache_dir=tmp_path / "c")
    kept = root / a.files[0]
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(kept)
    b = load_dataset("ferplus", root, "test", cache_dir=tmp_path / "c")
    assert np.all(b.images[0] == 7) and not np.all(a.images[0] == 7)


def test_missing_root_and_split(tmp_path):
    with pytest.raises(RobustferError, match="does not exist"):
        load_dataset("ferplus", tmp_path / "nope", "train")
    with pytest.raises(RobustferError, match=r"FER2013Train.label.csv"):
        load_dataset("ferplus", tmp_path, "train")
