"""Candidate label sets from votes (methods.md §5): the T-vote rule, unknown / not-a-face never candidates,
the given label always in, {label} without votes; numpy and torch agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustfer.data.candidates import candidate_sets
from robustfer.data.ferplus import process_votes, read_label_csv
from robustfer.errors import RobustferError

C = 8


def row(*emotions, unknown=0, nf=0):
    """One FERPlus vote row: 8 emotion counts, then unknown and not-a-face."""
    return list(emotions) + [0] * (8 - len(emotions)) + [unknown, nf]


def classes(mask_row) -> set[int]:
    return {int(j) for j in np.flatnonzero(np.asarray(mask_row))}


@pytest.mark.parametrize("votes,label,min_votes,expected", [
    (row(6, 2, 1, 1), 0, 1, {0, 1, 2, 3}),             # every class anyone voted for
    (row(6, 2, 1, 1), 0, 2, {0, 1}),                   # FERPlus's rule: single votes are outliers
    (row(6, 2, 1, 1), 0, 3, {0}),
    (row(4, 4, 0, 0, 2), 1, 2, {0, 1, 4}),             # a tie: both top classes
    (row(4, 4, 0, 0, 2), 0, 5, {0}),                   # nobody reaches T: the label alone
    (row(3, unknown=4, nf=3), 0, 1, {0}),              # unknown / not-a-face never, however many votes
    (row(0, 0, 9, 1), 5, 2, {2, 5}),                   # a (noisy) label with no vote is still in
    (row(2, 0, 0, 0, 0, 0, 0, 8), 7, 3, {7}),          # the label, even when T drops its rival below
])
def test_candidate_rule_on_hand_written_votes(votes, label, min_votes, expected):
    v = np.array([votes], np.float32)
    np_mask = candidate_sets(v, np.array([label]), C, min_votes)
    assert np_mask.dtype == bool and np_mask.shape == (1, C) and classes(np_mask[0]) == expected
    t_mask = candidate_sets(torch.from_numpy(v), torch.tensor([label]), C, min_votes)
    assert t_mask.dtype == torch.bool and classes(t_mask[0].numpy()) == expected


def test_a_batch_of_rows_at_once_in_torch():
    votes = torch.tensor([row(6, 2, 1, 1), row(0, 0, 9, 1), row(3, unknown=7)], dtype=torch.float32)
    mask = candidate_sets(votes, torch.tensor([0, 5, 0]), C, min_votes=2)
    assert [classes(m.numpy()) for m in mask] == [{0, 1}, {2, 5}, {0}]


def test_without_votes_the_set_is_the_label():
    labels = np.array([3, 0, 7])
    assert candidate_sets(None, labels, C, 2).tolist() == np.eye(C, dtype=bool)[labels].tolist()
    t = candidate_sets(None, torch.from_numpy(labels), C, 1)
    assert torch.equal(t, torch.eye(C, dtype=torch.bool)[torch.from_numpy(labels)])


def test_bad_arguments_are_refused():
    v = np.array([row(6, 2)], np.float32)
    with pytest.raises(RobustferError, match="min_votes 0"):
        candidate_sets(v, np.array([0]), C, 0)
    with pytest.raises(RobustferError, match="do not fit"):
        candidate_sets(v[:, :5], np.array([0]), C, 2)
    with pytest.raises(RobustferError, match="do not fit"):
        candidate_sets(v, np.array([0, 1]), C, 2)


def test_on_clean_ferplus_the_majority_label_always_has_two_votes(ferplus_root):
    """At T = 2 the votes alone already hold the majority label (it survived the outlier rule)."""
    _, votes = read_label_csv(ferplus_root / "FER2013Valid" / "label.csv")
    dist = np.array([process_votes(v.tolist(), "majority") for v in votes])
    kept = dist.argmax(1) < C
    labels = dist[kept].argmax(1)
    assert kept.sum() == 3191
    from_votes = votes[kept, :C] >= 2
    assert from_votes[np.arange(len(labels)), labels].all()
    mask = candidate_sets(votes[kept], labels, C, 2)
    assert np.array_equal(mask, from_votes)
    sizes = np.bincount(mask.sum(1), minlength=C + 1)
    assert sizes[0] == 0 and sizes[1] > 0 and sizes[2:].sum() > 0  # ambiguous images exist
