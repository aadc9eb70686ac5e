"""Long-tailed training subsets (robustfer/data/imbalance.py): factor, profile, seeding, noise."""
from __future__ import annotations

import numpy as np
import pytest

from robustfer.data.imbalance import long_tailed_counts, long_tailed_indices
from robustfer.data.noise import symmetric_noise
from robustfer.errors import RobustferError
from robustfer.train.config import TrainConfig
from robustfer.train.data import load_splits

# FERPlus train, majority labels, canonical order: neutral, happiness, surprise, sadness, anger,
# disgust, fear, contempt.
FERPLUS_COUNTS = np.array([8733, 7284, 3136, 3022, 2098, 116, 536, 120])


def labels_from_counts(counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """A shuffled label array with the given class counts."""
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y).astype(np.int64)


def rank_of(counts: np.ndarray) -> np.ndarray:
    """Rank of each class by count, largest first, ties by class index."""
    order = np.argsort(-counts, kind="stable")
    r = np.empty(len(counts), np.int64)
    r[order] = np.arange(len(counts))
    return r


@pytest.mark.parametrize("factor", [1, 10, 50, 100])
def test_realised_factor_is_requested_on_ferplus(factor):
    keep = long_tailed_counts(FERPLUS_COUNTS, factor)
    assert keep.max() / keep.min() == factor
    assert np.all(keep <= FERPLUS_COUNTS) and np.all(keep >= 1)


def test_non_integer_factor_as_close_as_integers_allow():
    keep = long_tailed_counts(FERPLUS_COUNTS, 37.3)
    assert abs(keep.max() / keep.min() - 37.3) <= 0.5 / keep.min()


@pytest.mark.parametrize("counts", [FERPLUS_COUNTS, np.array([500, 400, 300, 300, 200, 100, 50]),
                                    np.array([1000] * 7)])
@pytest.mark.parametrize("factor", [2, 10, 50])
def test_profile_is_exponential_and_monotone(counts, factor):
    keep = long_tailed_counts(counts, factor)
    r = rank_of(counts)
    by_rank = keep[np.argsort(r)]
    assert np.all(np.diff(by_rank) <= 0)  # monotone along the ranking
    span = len(counts) - 1
    ideal = by_rank[0] * float(factor) ** (-np.arange(len(counts)) / span)
    assert np.all(np.abs(by_rank - ideal) <= 0.5 + 1e-9)  # exponential up to integer rounding
    assert by_rank[0] / by_rank[-1] == factor


def test_profile_scale_is_the_largest_that_fits():
    """The profile is shrunk only as far as the tightest class needs (contempt on FERPlus)."""
    keep = long_tailed_counts(FERPLUS_COUNTS, 10)
    assert keep.tolist() == [860, 619, 445, 321, 231, 86, 166, 119]
    keep = long_tailed_counts(np.array([1000, 800, 600, 400]), 4)  # nothing short: n_max = largest count
    assert keep[0] == 1000 and keep[-1] == 250


def test_indices_match_counts_sorted_unique_and_seeded():
    y = labels_from_counts(FERPLUS_COUNTS)
    idx = long_tailed_indices(y, 8, 50, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.array_equal(np.bincount(y[idx], minlength=8), long_tailed_counts(FERPLUS_COUNTS, 50))
    assert np.array_equal(idx, long_tailed_indices(y, 8, 50, seed=3))
    assert not np.array_equal(idx, long_tailed_indices(y, 8, 50, seed=4))


def test_absent_class_stays_absent():
    counts = np.array([400, 0, 200, 100])
    keep = long_tailed_counts(counts, 4)
    assert keep[1] == 0 and keep.max() / keep[keep > 0].min() == 4


def test_with_noise_indices_are_drawn_on_clean_labels():
    clean = labels_from_counts(FERPLUS_COUNTS, seed=1)
    noisy = symmetric_noise(clean, 8, 0.2, seed=5)
    idx = long_tailed_indices(clean, 8, 100, seed=0)
    assert np.array_equal(idx, long_tailed_indices(clean.copy(), 8, 100, seed=0))  # independent of the noise
    kept = np.bincount(clean[idx], minlength=8)
    assert kept.max() / kept.min() == 100
    flip_rate = np.mean(noisy[idx] != clean[idx])
    assert 0.17 < flip_rate < 0.23  # the subset keeps its share of flipped labels


def test_bad_factor_and_impossible_requests():
    y = labels_from_counts(np.array([50, 40, 30]))
    for bad in (0.5, 0, -3, float("nan"), float("inf"), "ten"):
        with pytest.raises(RobustferError, match="imbalance factor"):
            long_tailed_indices(y, 3, bad, seed=0)
    with pytest.raises(RobustferError, match="cannot be realised"):
        long_tailed_counts(np.array([5, 3, 1]), 100)
    with pytest.raises(RobustferError, match="at least 2 classes"):
        long_tailed_counts(np.array([10, 0, 0]), 2)
    with pytest.raises(RobustferError, match="labels must lie"):
        long_tailed_indices(np.array([0, 3]), 3, 2, seed=0)


def test_load_splits_combines_noise_and_imbalance(ferplus_root, tmp_path):
    """The trainer's data path: noise on the whole split, then the subset drawn by clean label."""
    cfg = TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path), noise="symmetric:0.2",
                      imbalance=50, seed=1)
    train, *_ = load_splits(cfg)
    kept = np.bincount(train.clean_labels, minlength=train.num_classes)
    assert kept.max() / kept.min() == 50 and len(train) == kept.sum() == 7851
    assert 0.17 < train.flipped.mean() < 0.23
