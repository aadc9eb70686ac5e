"""LDL: label distribution learning from the votes, KL(d_i || p_i) (methods.md §5).

d_i = `batch.soft`, the vote distribution after the `--label-mode` processing (microsoft/FERPlus
`_process_data`): use `--label-mode crossentropy` or `probability` (the top classes up to 75% of the
votes) for LDL proper; with `--label-mode majority` d_i is one-hot and the loss equals CE exactly, as it
does on data without votes (d_i = one-hot of the label). Loss: sum_ij d_ij (log d_ij - log p_ij) / N
(torch's kl_div, reduction "batchmean", 0 log 0 = 0), in float32 from the logits. Its gradient is soft-target
CE's; it differs from it by the constant entropy of d, so it is 0 exactly where p = d. CE's recipe and
views, so the CE control of LDL is CE itself.
"""
from __future__ import annotations

import torch.nn.functional as F

from robustfer.methods.base import Batch, Method, State
from robustfer.methods.ce import CE


def ldl_loss(logits, d):
    """KL(d || softmax(logits)), summed over classes, mean over the batch."""
    return F.kl_div(logits.float().log_softmax(1), d.float(), reduction="batchmean")


class LDL(Method):
    name = "ldl"
    summary = "KL from the annotators' vote distribution (label distribution learning)"
    paper = "label distribution learning (Geng, TKDE 2016); a baseline in arXiv 2209.15402"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    recipe = CE.recipe
    cpu_recipe_ok = CE.cpu_recipe_ok
    make_views = CE.make_views

    def loss(self, model, batch: Batch, state: State):
        logits = model(batch.views["weak"])
        d = batch.soft if batch.soft is not None else F.one_hot(batch.labels, logits.shape[1])
        return ldl_loss(logits, d), {}
