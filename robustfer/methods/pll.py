"""PLL: partial-label learning on the annotators' candidate sets with PRODEN (Lv et al., ICML 2020,
"Progressive identification of true labels for partial-label learning"), methods.md §5.

S_i = the classes with at least `min_votes` votes, plus the given label (`data/candidates.py`; unknown /
not-a-face votes are never candidates). Per-sample targets w_i live in `state.tensors["pll_targets"]`
(N x C float, indexed by data set index, saved in checkpoints): uniform over S_i when sample i is first
drawn (a row of zeros = not drawn yet), zero outside S_i, summing to 1. The loss is PRODEN's

    L = -mean_i sum_j w_ij log softmax(z_i)_j,

and the update, on the weak view without gradient, w_ij <- p_ij [j in S_i] / sum_{k in S_i} p_ik
(= a softmax of the logits restricted to S_i, computed so, which never divides by an underflowed sum):
- `update=step` (default): after each optimiser step, from the probabilities of the step's own forward
  (before the step). No extra pass; the authors' code does this (lvjiaqi77/PRODEN `partial_loss`
  returns the new target from the same output).
- `update=reforward`: PLENCH's PRODEN: after the step the batch's weak view runs forward again through
  the updated model (one more forward per step). The model stays in training mode (batch statistics),
  as in PLENCH, but BatchNorm's running statistics are put back afterwards: the extra pass is not
  counted as an update of them (PLENCH's counts it twice).
- `update=epoch` (robustfer option): targets stay fixed for an epoch; each sample's new target, from its
  forward in that epoch, is applied in `on_epoch_end`.
With one label per image (no votes) S_i = {label}: w_i stays one-hot and PLL is exactly CE. The
recipe and views are CE's, so the CE control of PLL is CE itself. Per-sample statistics:
`target_max` (the largest w_ij the step trained on: 1/|S_i| at first, towards 1 as S_i is
disambiguated) and `candidates` (|S_i|).
"""
from __future__ import annotations

import torch

from robustfer.data.candidates import candidate_sets
from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State
from robustfer.methods.ce import CE

UPDATES = ("step", "reforward", "epoch")


def restricted_softmax(logits: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """p_ij [j in S_i] / sum_{k in S_i} p_ik, as softmax over S_i of the float32 logits (0 outside S_i)."""
    return logits.float().masked_fill(~cand, float("-inf")).softmax(1)


class PLL(Method):
    name = "pll"
    summary = "partial-label learning on the annotators' candidate sets (PRODEN)"
    paper = "PRODEN (ICML 2020); FER as PLL (arXiv 2209.15402)"
    all_parameters_every_step = True  # tested: tests/train/test_distributed.py
    recipe = CE.recipe
    cpu_recipe_ok = CE.cpu_recipe_ok
    make_views = CE.make_views

    def __init__(self, min_votes: int = 2, update: str = "step", **options):
        super().__init__(**options)
        if not isinstance(min_votes, (int, float)) or isinstance(min_votes, bool) or min_votes != int(min_votes) \
                or min_votes < 1:
            raise RobustferError(f"pll option min_votes={min_votes!r}: use an integer >= 1 "
                                 "(2 = FERPlus's outlier rule)")
        if update not in UPDATES:
            raise RobustferError(f"pll option update={update!r}: use one of {', '.join(UPDATES)}")
        self.min_votes = int(min_votes)
        self.update = update
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # this step's (index, S, new w)

    def targets(self, state: State, num_classes: int, device: torch.device) -> torch.Tensor:
        """The N x C target table in `state.tensors`, allocated (all rows not drawn yet) on first use."""
        t = state.tensors.get("pll_targets")
        if t is None:
            if state.num_train <= 0:
                raise RobustferError("pll needs state.num_train (the training set size) to keep per-sample targets")
            t = state.tensors["pll_targets"] = torch.zeros(state.num_train, num_classes, device=device)
        return t

    def loss(self, model, batch: Batch, state: State):
        logits = model(batch.views["weak"])
        c = logits.shape[1]
        cand = candidate_sets(batch.votes, batch.labels, c, self.min_votes)
        table = self.targets(state, c, logits.device)
        w = table[batch.index]
        fresh = w.sum(1) == 0  # first draw: uniform over S_i
        if fresh.any():
            w[fresh] = cand[fresh].float() / cand[fresh].sum(1, keepdim=True)
            table[batch.index] = w
        loss = -(w * logits.float().log_softmax(1)).sum(1).mean()
        new = restricted_softmax(logits.detach(), cand)
        if self.update == "epoch":
            state.tensors.setdefault("pll_next", torch.zeros_like(table))[batch.index] = new
        else:
            self._pending = (batch.index, cand, new)
        return loss, {"target_max": w.amax(1), "candidates": cand.sum(1).float()}

    @torch.no_grad()
    def after_step(self, model, batch: Batch, state: State) -> None:
        if self._pending is None:
            return
        idx, cand, new = self._pending
        self._pending = None
        if self.update == "reforward":
            saved = [b.clone() for b in model.buffers()]
            new = restricted_softmax(model(batch.views["weak"]), cand)
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)
        state.tensors["pll_targets"][idx] = new

    def on_epoch_end(self, state: State) -> None:
        nxt = state.tensors.get("pll_next")
        if nxt is None:
            return
        drawn = nxt.sum(1) > 0
        state.tensors["pll_targets"][drawn] = nxt[drawn]
        nxt.zero_()
