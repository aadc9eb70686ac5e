"""Pure functions on predictions and labels -> figures (numpy in, floats out, like cleanlab's core)."""
from robustfer.evaluate.metrics import (accuracy, confusion_matrix, evaluate_predictions, mean_class_accuracy,
                                        mean_by_class, noise_detection, per_class_recall, softmax, vote_metrics)

__all__ = ["accuracy", "confusion_matrix", "evaluate_predictions", "mean_by_class", "mean_class_accuracy", "noise_detection",
           "per_class_recall", "softmax", "vote_metrics"]
