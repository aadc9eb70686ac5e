"""Started by tests/train/test_distributed.py under torchrun (2 ranks, gloo, CPU):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/train/ddp_check.py OUT DATA

Each rank does the checks that need several processes and writes what it saw to OUT/rank<R>.pt; the test
compares the ranks with each other and with one-process runs. Also home of the toy data and of `tiny_gn`,
a BatchNorm-free network (GroupNorm normalises each sample alone), so that a 2-rank run can be compared
with a 1-rank run without BatchNorm's per-rank statistics in the way.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

TINY = "tiny_gn"


class TinyGN(nn.Module):
    """Two stride-2 3x3 convs with GroupNorm and ReLU; a feature map for CAM / map heads (eac, rul)."""

    def __init__(self, in_chans: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 2, 1), nn.GroupNorm(4, 16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1), nn.GroupNorm(4, 32), nn.ReLU())
        self.feature_dim, self.in_chans = 32, in_chans

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean((2, 3))


def register_tiny(models: dict) -> None:
    from robustfer.models import ModelEntry

    models[TINY] = ModelEntry(lambda in_chans=1: TinyGN(in_chans), 16, 1, 2)


def config(root: Path, out: Path, **kw):
    from robustfer.train import TrainConfig

    base = dict(dataset="folder", root=str(root), out=str(out), model="compact_s", input_size=16, epochs=2,
                batch_size=32, seed=3, select_split="test", device="cpu", threads=1,
                precision="fp32")  # fp32: bf16 autocast (auto on CPUs with native bf16) rounds differently per batch split
    return TrainConfig(**{**base, **kw})


# 2-rank vs 1-rank comparisons: tiny_gn learns the toy bands in 3 epochs of Adam (test accuracy ~0.75)
TINY_RUNS = (("ce", {}), ("scn", {"warmup": 1, "margin_2": 0.1}))  # scn: relabels 1 in 6 flipped labels by epoch 3


def tiny_config(root: Path, out: Path, method: str, options: dict, **kw):
    return config(root, out, method=method, model=TINY, noise="symmetric:0.3", epochs=3, batch_size=16,
                  optimizer="adam", lr=0.01, schedule="constant", method_options=options, **kw)


def gradients(root: Path, out: Path, method: str, options: dict) -> dict:
    """One step of `method` through DDP, and the same step of an undistributed copy on this rank's part alone:
    DDP's gradient must be the mean over the ranks of those own gradients (None = no gradient, as zeros)."""
    from robustfer.methods import Batch
    from robustfer.train.trainer import Run

    run = Run(config(root, out / f"grad_{method}", method=method, method_options=options), quiet=True)
    own_model = copy.deepcopy(run.model)
    run.dist.start_epoch(run.cfg.seed, 0, run.g)
    views, idx, mine, g = run.batch_views(run.epoch_order(len(run.labels))[:run.batch_size])
    batch = Batch(views=views, labels=run.labels[mine], index=mine, generator=g)
    run.opt.zero_grad(set_to_none=True)
    loss, _ = run.step_loss(batch)
    loss.backward()
    own_loss, _ = run.method.loss(own_model, batch, run.state)
    own_loss.backward()
    grad = lambda m: [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in m.parameters()]  # noqa: E731
    own = grad(own_model)
    mean_own = [run.dist.gather_cat(o.unsqueeze(0), [1] * run.dist.world).mean(0) for o in own]
    return {"ddp": grad(run.model), "own": own, "mean_own": mean_own,
            "unused": [n for n, p in run.model.named_parameters() if p.grad is None]}


def main(out: Path, root: Path) -> None:
    from robustfer.models import MODELS
    from robustfer.pretrain import PretrainConfig, pretrain
    from robustfer.train import train
    from robustfer.train import trainer

    register_tiny(MODELS)
    rank = int(os.environ["RANK"])
    seen: dict = {"world": int(os.environ["WORLD_SIZE"])}
    # a plain model call (ce), attribute calls (scn: weighted; eac: cam_logits on two views), unused parameters
    # (ncctfer in its warm-up: the negative head)
    seen["grad"] = {m: gradients(root, out, m, o) for m, o in
                    (("ce", {}), ("scn", {"warmup": 5}), ("eac", {}), ("ncctfer", {"warmup": 5}))}

    runs = []
    real = trainer.Run.train_epoch

    def recording(self, progress):
        runs.append(self)
        return real(self, progress)

    trainer.Run.train_epoch = recording
    # SCN relabelling from the first epoch (margin 0.05: many relabels): its per-sample state on every rank;
    # the images streamed from the memory-mapped cache (training batches and the evaluation's parts)
    train(config(root, out / "scn", method="scn", noise="symmetric:0.3", data_in_memory="no",
                 method_options={"warmup": 0, "margin_2": 0.05}), quiet=True)
    run = runs[-1]
    seen["scn"] = {"state": {k: v.cpu() for k, v in run.state.tensors.items()},
                   "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
                   "history": run.history}
    # against one-process runs (the test runs those): exact views (global), no BatchNorm (tiny_gn)
    for method, options in TINY_RUNS:
        train(tiny_config(root, out / f"{method}_tiny", method, options, ddp_views="global"), quiet=True)
    # pretrain: SimSiam through DDP
    pretrain(PretrainConfig(dataset="folder", root=str(root), out=str(out / "pretrain"), objective="simsiam",
                            model="compact_s", input_size=16, epochs=1, batch_size=32, device="cpu", threads=1),
             quiet=True)
    torch.save(seen, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
