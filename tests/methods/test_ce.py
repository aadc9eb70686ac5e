"""CE's FERPlus label modes: the data's mode comes from State (the trainer names no method), the option
overrides it; `probability` draws one-hot targets with the vote frequencies (chi-square); the official
flip-or-noise + erasing view that SCN and RUL share."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import chisquare

from robustfer.methods import Batch, State
from robustfer.methods.ce import CE

C = 8
D = torch.tensor([0.5, 0.3, 0.2, 0, 0, 0, 0, 0])


class Logits(nn.Module):
    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z = nn.Parameter(z.clone().float())

    def forward(self, x):
        return self.z


def batch_of(soft: torch.Tensor, seed: int = 0) -> Batch:
    n = len(soft)
    return Batch(views={"weak": torch.zeros(n, 1, 4, 4)}, labels=soft.argmax(1), index=torch.arange(n), soft=soft,
                 generator=torch.Generator().manual_seed(seed))


def drawn_labels(n: int, seed: int) -> torch.Tensor:
    """The one-hot targets CE drew for n images of distribution D, read off the gradient: at zero logits
    d(mean CE)/dz_i = (1/C - onehot(pick_i)) / n, negative exactly at the picked class."""
    model = Logits(torch.zeros(n, C))
    loss, _ = CE().loss(model, batch_of(D.repeat(n, 1), seed), State(label_mode="probability"))
    loss.backward()
    return model.z.grad.argmin(1)


def test_probability_mode_draws_labels_with_the_vote_frequencies():
    n = 20000
    counts = torch.bincount(drawn_labels(n, seed=0), minlength=C)
    assert counts[3:].sum() == 0  # never a class without votes
    observed = counts[:3].numpy()
    assert chisquare(observed, n * D[:3].numpy()).pvalue > 1e-3
    assert chisquare(observed, n * torch.tensor([0.45, 0.35, 0.2]).numpy()).pvalue < 1e-6  # a wrong law is rejected
    assert not torch.equal(drawn_labels(64, seed=0), drawn_labels(64, seed=1))  # the batch generator's stream


def test_label_mode_comes_from_the_state_and_the_option_overrides_it():
    z = torch.randn(2, C, generator=torch.Generator().manual_seed(3))
    soft = torch.stack([D, F.one_hot(torch.tensor(4), C).float()])
    b = batch_of(soft)
    soft_ce = F.cross_entropy(z, soft).item()
    hard_ce = F.cross_entropy(z, soft.argmax(1)).item()
    assert CE().loss(Logits(z), b, State(label_mode="crossentropy"))[0].item() == pytest.approx(soft_ce)
    assert CE().loss(Logits(z), b, State(label_mode="majority"))[0].item() == pytest.approx(hard_ce)
    assert CE().loss(Logits(z), b, State())[0].item() == pytest.approx(hard_ce)  # data without a mode
    assert CE(label_mode="crossentropy").loss(Logits(z), b, State())[0].item() == pytest.approx(soft_ce)
    override = CE(label_mode="majority").loss(Logits(z), b, State(label_mode="crossentropy"))[0]
    assert override.item() == pytest.approx(hard_ce)


def test_the_trainer_passes_the_datas_label_mode_and_votes_not_a_method_option(tmp_path, ferplus_root):
    from robustfer.train import TrainConfig
    from robustfer.train.trainer import Run

    run = Run(TrainConfig(dataset="ferplus", root=str(ferplus_root), out=str(tmp_path), limit=64, threads=1,
                          label_mode="crossentropy", eval_split="valid", eval_limit=8), quiet=True)
    assert run.state.label_mode == "crossentropy" and run.method.label_mode is None
    assert run.votes.shape == (64, 10) and torch.equal(run.votes.cpu(), torch.from_numpy(run.train_data.votes))


def test_official_view_is_flip_or_noise_then_erasing():
    """methods.md, the view SCN, RUL and CE share: with p 0.5 EITHER a mirror OR Gaussian noise (std sqrt(30)),
    50/50; resize, normalise; RandomErasing(p 0.5, scale (0.02, 0.25)) with value 0."""
    from robustfer import augment as A
    from robustfer.methods import ViewSpec, create_method

    x = torch.randint(0, 256, (400, 1, 48, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    spec = ViewSpec(48, 1)                                       # the official recipe
    got = CE().make_views(x, torch.Generator().manual_seed(1), spec)["weak"]
    g = torch.Generator().manual_seed(1)
    want = A.random_erasing(A.normalize(A.resize(A.flip_or_noise(A.to_float(x, 1), g), 48), "imagenet"), g,
                            p=0.5, scale=(0.02, 0.25))
    assert torch.equal(got, want), "CE's view is not flip-or-noise + normalise + RandomErasing(0.5, (0.02, 0.25))"
    for name in ("scn", "rul"):
        assert torch.equal(create_method(name).make_views(x, torch.Generator().manual_seed(1), spec)["weak"], got), name
    # the marks in the pixels: erased boxes (value 0, never a normalised uint8 level) on about half the views,
    # at most a quarter of the image; elsewhere the image as it was, mirrored, or with noise
    erased = got == 0
    share = erased.flatten(1).float().mean(1)
    assert 150 < int((share > 0).sum()) < 250 and share.max() <= 0.25 + 0.02   # box sides rounded
    plain = A.normalize(A.to_float(x, 1), "imagenet")
    kept = ((got == plain) | erased).flatten(1).all(1)
    mirrored = ((got == plain.flip(-1)) | erased).flatten(1).all(1) & ~kept
    noisy = ~(kept | mirrored)
    assert 150 < int(kept.sum()) < 250 and 60 < int(mirrored.sum()) < 140 and 60 < int(noisy.sum()) < 140
