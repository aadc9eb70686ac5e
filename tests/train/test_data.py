"""The trainer's training-split selection: --limit, --offset and --imbalance."""
import numpy as np

from robustfer.train import TrainConfig
from robustfer.train.data import load_splits


def test_offset_and_limit_select_a_disjoint_slice_with_the_same_noisy_labels(ferplus_root, tmp_path):
    """--offset 100 --limit 50 = images 100..149 of the split, labelled as in a run over the whole split."""
    base = dict(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path), noise="symmetric:0.3", seed=2,
                eval_limit=8)
    whole, *_ = load_splits(TrainConfig(**base))
    part, *_ = load_splits(TrainConfig(**base, offset=100, limit=50))
    head, *_ = load_splits(TrainConfig(**base, limit=100))
    assert part.files == whole.files[100:150]
    assert np.array_equal(part.labels, whole.labels[100:150])
    assert np.array_equal(part.images, whole.images[100:150])
    assert not set(part.files) & set(head.files)
    tail, *_ = load_splits(TrainConfig(**base, offset=len(whole) - 3))
    assert tail.files == whole.files[-3:]


def test_config_saves_paths_given_through_the_python_api(tmp_path):
    """TrainConfig fields given as Path objects (Python API) are written as strings and read back."""
    cfg = TrainConfig(dataset="ferplus", root=tmp_path / "data", out=str(tmp_path / "run"), init=tmp_path / "w.pt")
    cfg.save(tmp_path / "config.json", {"version": "x"})
    back = TrainConfig.load(tmp_path / "config.json")
    assert back.root == str(tmp_path / "data") and back.init == str(tmp_path / "w.pt")


def test_imbalance_draws_its_long_tailed_subset_from_the_offset_limit_images(ferplus_root, tmp_path):
    """--offset/--limit select the pool first; --imbalance then keeps the requested factor inside it."""
    base = dict(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path), noise="symmetric:0.2", seed=3,
                eval_limit=8)
    whole, *_ = load_splits(TrainConfig(**base))
    lt, *_ = load_splits(TrainConfig(**base, offset=100, limit=2000, imbalance=4))
    pool = whole.files[100:2100]
    assert set(lt.files) <= set(pool) and len(lt.files) < len(pool)
    where = {f: i for i, f in enumerate(whole.files)}
    rows = np.array([where[f] for f in lt.files])
    assert np.array_equal(lt.labels, whole.labels[rows])  # the same noisy labels as over the whole split
    counts = np.bincount(lt.clean_labels, minlength=lt.num_classes)
    counts = counts[counts > 0]
    assert counts.max() == 4 * counts.min()


def test_every_label_mode_is_evaluated_on_the_majority_rule_test_and_valid_images(ferplus_root, tmp_path):
    """Training label modes keep different images; evaluation and selection never change with them."""
    base = dict(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path), select_split="valid")
    tr_m, sel_m, ev_m = load_splits(TrainConfig(**base))
    tr_c, sel_c, ev_c = load_splits(TrainConfig(**base, label_mode="crossentropy"))
    assert len(tr_c) != len(tr_m)  # the training sets do differ
    assert ev_c.files == ev_m.files and np.array_equal(ev_c.labels, ev_m.labels) and len(ev_m) == 3137
    assert sel_c.files == sel_m.files and np.array_equal(sel_c.labels, sel_m.labels)
