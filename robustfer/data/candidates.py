"""Candidate label sets from annotators' votes, for partial-label learning (methods.md §5).

S_i = {classes with at least T = `min_votes` votes} ∪ {the given label}. T = 2 is FERPlus's own outlier
rule (microsoft/FERPlus `_process_data` drops single votes); T = 1 keeps every class anyone voted for.
The vote columns after the C emotion classes (FERPlus: unknown, not-a-face) are never candidates,
however many votes they have. A data set without votes (one label per image) gives S_i = {label}, and
partial-label learning on it is plain cross-entropy.
"""
from __future__ import annotations

import numpy as np
import torch

from robustfer.errors import RobustferError


def candidate_sets(votes: np.ndarray | torch.Tensor | None, labels: np.ndarray | torch.Tensor, num_classes: int,
                   min_votes: int = 2) -> np.ndarray | torch.Tensor:
    """Bool N x C candidate mask: column j is set where class j has >= `min_votes` votes or j is the label.

    votes: N x V vote counts, V >= C, the first C columns the classes (FERPlus: N x 10, the 8 emotions,
      then unknown and not-a-face, which are ignored), or None for data with one label per image.
    labels: N given labels. On clean FERPlus this is the majority class; under synthetic noise it is the
      given, possibly flipped, label. Either way it is always a candidate, so the training target never
      leaves the set the label names. Synthetic noise flips labels, not votes: a flipped image's set is
      its noisy label plus the classes its annotators voted for, which usually include the clean one.
    Torch in, torch out (on the labels' device, cheap enough per batch); numpy in, numpy out."""
    if int(min_votes) < 1:
        raise RobustferError(f"min_votes {min_votes!r}: use an integer >= 1 (2 = FERPlus's own outlier rule)")
    if votes is not None and (votes.ndim != 2 or votes.shape[1] < num_classes or votes.shape[0] != labels.shape[0]):
        raise RobustferError(f"votes of shape {tuple(votes.shape)} do not fit {labels.shape[0]} labels of "
                             f"{num_classes} classes: expected N x V with V >= {num_classes}")
    if torch.is_tensor(labels):
        mask = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
        if votes is not None:
            mask |= torch.as_tensor(votes, device=labels.device)[:, :num_classes] >= min_votes
        mask[torch.arange(labels.shape[0], device=labels.device), labels.long()] = True
        return mask
    labels = np.asarray(labels, np.int64)
    mask = np.zeros((len(labels), num_classes), bool)
    if votes is not None:
        mask |= np.asarray(votes)[:, :num_classes] >= min_votes
    mask[np.arange(len(labels)), labels] = True
    return mask
