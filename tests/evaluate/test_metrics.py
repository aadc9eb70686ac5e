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
