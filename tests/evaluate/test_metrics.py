import math

import numpy as np
import pytest

from robustfer.evaluate import (confusion_matrix, evaluate_predictions, mean_by_class, mean_class_accuracy,
                                noise_detection)
from robustfer.evaluate.metrics import topk_accuracy


def test_confusion_and_mean_class_accuracy_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2])
    cm = confusion_matrix(pred, labels, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    r = evaluate_predictions(pred, labels, ("a", "b", "c"))
    assert r["accuracy"] == 5 / 7
    assert r["per_class_recall"] == {"a": 0.75, "b": 0.5, "c": 1.0}
    assert math.isclose(r["mean_class_accuracy"], (0.75 + 0.5 + 1.0) / 3)


def test_absent_class_is_left_out_of_the_mean():
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 3)
    assert mean_class_accuracy(cm) == 0.5


def test_noise_detection_scores():
    flagged = np.array([1, 1, 0, 0, 1], bool)
    flipped = np.array([1, 0, 1, 0, 1], bool)
    s = noise_detection(flagged, flipped)
    assert s == {"flagged_fraction": 0.6, "noise_precision": 2 / 3, "noise_recall": 2 / 3}


def test_top2_accuracy():
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = np.array([1, 0, 2])
    assert topk_accuracy(scores, labels, 1) == 0.0
    assert topk_accuracy(scores, labels, 2) == 1 / 3
    assert evaluate_predictions(scores.argmax(1), labels, ("a", "b", "c"), scores)["top2_accuracy"] == 1 / 3


def test_mean_by_class_skips_nan_and_marks_empty_classes():
    values = np.array([0.2, 0.4, np.nan, 0.9, 0.1])
    labels = np.array([0, 0, 0, 2, 2])
    got = mean_by_class(values, labels, ["a", "b", "c"])
    assert got["a"] == pytest.approx(0.3) and got["b"] is None and got["c"] == pytest.approx(0.5)


# ---- vote-aware figures (methods.md §5): hand-computed on tiny examples ----
from robustfer.evaluate import softmax, vote_metrics  # noqa: E402


def test_vote_kl_is_zero_when_p_equals_the_vote_distribution():
    votes = np.array([[2, 2, 0, 0, 1, 0], [0, 0, 5, 5, 0, 0]], float)  # 4 classes + unknown + not-a-face
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # p = 0 where d = 0: 0 log 0 = 0
    r = vote_metrics(probs, votes)
    assert r["vote_kl"] == pytest.approx(0.0, abs=1e-12)
    assert r["top_vote_prob"] == pytest.approx(0.5)  # two tied top classes with 0.5 each
    assert r["vote_images"] == 2 and r["plausible_min_votes"] == 2


def test_vote_kl_known_value_and_unknown_not_a_face_columns_ignored():
    probs = np.array([[0.5, 0.25, 0.25]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.25)  # d = (3, 1, 0) / 4
    plain = vote_metrics(probs, np.array([[3, 1, 0]], float))
    extra = vote_metrics(probs, np.array([[3, 1, 0, 5, 1]], float))  # 5 unknown, 1 not-a-face: no effect
    assert plain["vote_kl"] == pytest.approx(kl)
    assert plain == extra
    assert plain["top_vote_prob"] == 0.5 and plain["plausible_accuracy"] == 1.0


def test_vote_kl_clips_p_and_skips_images_without_class_votes():
    probs = np.array([[1.0, 0.0], [0.3, 0.7]])
    votes = np.array([[1, 1, 0, 0], [0, 0, 9, 1]], float)  # image 1: only unknown / not-a-face votes
    r = vote_metrics(probs, votes)
    assert r["vote_images"] == 1
    assert r["vote_kl"] == pytest.approx(0.5 * math.log(0.5 / 1.0) + 0.5 * math.log(0.5 / 1e-12))
    assert math.isfinite(r["vote_kl"])
    none = vote_metrics(probs[1:], votes[1:])
    assert none["vote_images"] == 0 and all(math.isnan(none[k]) for k in ("vote_kl", "top_vote_prob", "plausible_accuracy"))


def test_top_vote_prob_averages_over_tied_top_classes():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    votes = np.array([[2, 2, 1], [0, 1, 3]], float)  # image 0: classes 0 and 1 tie with 2 votes
    assert vote_metrics(probs, votes)["top_vote_prob"] == pytest.approx(((0.6 + 0.3) / 2 + 0.6) / 2)


def test_plausible_accuracy_with_one_and_two_votes():
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]])
    votes = np.array([[3, 1, 0], [0, 1, 4], [0, 5, 2]], float)  # predicted class got 1, 4 and 0 votes
    assert vote_metrics(probs, votes, min_votes=1)["plausible_accuracy"] == pytest.approx(2 / 3)
    assert vote_metrics(probs, votes, min_votes=2)["plausible_accuracy"] == pytest.approx(1 / 3)
    assert vote_metrics(probs, votes)["plausible_accuracy"] == pytest.approx(1 / 3)  # T = 2 by default


def test_vote_metrics_refuses_votes_that_do_not_fit():
    with pytest.raises(ValueError, match="V >= C"):
        vote_metrics(np.full((2, 3), 1 / 3), np.ones((2, 2)))


def test_evaluate_predictions_adds_vote_figures_on_softmax_of_the_logits_only_with_votes():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    logits = np.log(probs) + np.array([[3.0], [-1.0]])  # softmax recovers probs whatever the offset
    assert np.allclose(softmax(logits), probs)
    votes = np.array([[3, 1, 0, 1, 0], [0, 2, 2, 0, 0]], float)
    labels = np.array([0, 2])
    r = evaluate_predictions(logits.argmax(1), labels, ("a", "b", "c"), logits, votes=votes)
    want = vote_metrics(probs, votes)
    for k in ("vote_kl", "top_vote_prob", "plausible_accuracy", "vote_images"):
        assert r[k] == pytest.approx(want[k]), k
    assert r["plausible_accuracy"] == 1.0 and r["accuracy"] == 1.0
    for votes in (None, np.zeros((0, 5))):
        assert "vote_kl" not in evaluate_predictions(logits.argmax(1), labels, ("a", "b", "c"), logits, votes=votes)
