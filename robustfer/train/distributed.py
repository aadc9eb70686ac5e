"""Several processes, one run: PyTorch's own DistributedDataParallel, started by `torchrun`.

`torchrun --nproc-per-node N -m robustfer train ...` starts N processes (ranks); each holds a replica of the
network on its device (cuda:LOCAL_RANK, or the CPU with the gloo backend) and trains on its part of every
global batch (`--batch-size` is the global batch, split evenly). Without torchrun's environment
(WORLD_SIZE unset or 1) nothing here is used and a run is exactly what it was.

What each rank does, and why:
- The epoch's order comes from the run's seeded generator, drawn identically on every rank; rank r takes the
  r-th of W equal parts of each batch. `--ddp-views shard` (default): it augments only its part, with its
  own generator seeded from (seed, epoch, rank); `global`: every rank augments the whole batch with the
  run's generator and keeps its part, so the views are exactly the 1-process run's (W times the augmentation
  work: a check, not a speed-up).
- The method's whole loss runs inside ONE DistributedDataParallel.forward (`LossStep`): methods call model
  attributes (eac's cam_logits, ncctfer's heads, rul's embed and fc, scn's weighted, poi's pin and conf) and
  several views per step, and DDP arms its gradient reduction per forward call; inside one forward every
  such call is covered, and DDP's own reducer averages the gradients over the ranks during backward().
  `find_unused_parameters=True` unless the method declares `all_parameters_every_step`: a step may leave
  parameters without gradient (ncctfer's negative head when no sample is uncertain, poi's confidence head in
  its warm-up), on one rank or all, which DDP must then mark ready itself; one forward per step keeps that
  search exact (with several DDP forwards per step, parameters of an earlier call would be marked unused,
  then reduced twice). Methods that use every parameter in every step skip the search (its graph traversal).
- Per-sample method state (state.tensors indexed by data set index: SCN / RUL relabels, PLL targets) is
  written by each rank for its part of the batch; after every step the rows of all parts are gathered and
  written on every rank, so it is identical everywhere (state of another shape follows rank 0's).
  Per-sample stats are gathered the same way; the epoch's loss is averaged over the ranks.
- BatchNorm normalises each rank's part (`--sync-bn`: torch's SyncBatchNorm over all ranks, CUDA only);
  its running statistics, and the EMA's, are rank 0's: broadcast before every evaluation and checkpoint.
- Evaluation: each rank predicts its contiguous part of the split, the logits are gathered on every rank.
- Only rank 0 writes the run folder. Checkpoints hold the bare network (no DDP prefix), so a run resumes
  with any number of ranks (a different W changes BatchNorm's parts and the shard views from then on).
- A rank that dies stops the job: the others fail in their next collective (or torchrun stops them) with
  one error line; checkpoints are written atomically, so --resume continues from the last finished epoch.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import inspect
import os
import re
import signal
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from robustfer.errors import RobustferError

VIEWS = ("shard", "global")
_CURRENT: "Dist | None" = None


def launched() -> bool:
    """True inside a torchrun job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> "Dist | None":
    """The process group this process belongs to (set up by `setup`), or None."""
    return _CURRENT


def timeout_s() -> float:
    """Collective timeout: $ROBUSTFER_DIST_TIMEOUT seconds (default 300): a rank that stops answering fails
    the others within it instead of torch's 10-30 minutes."""
    try:
        return float(os.environ.get("ROBUSTFER_DIST_TIMEOUT", "300"))
    except ValueError:
        raise RobustferError("ROBUSTFER_DIST_TIMEOUT must be a number of seconds, e.g. 300") from None


def _stop_on_sigterm(signum, frame):
    """torchrun stops the other ranks with SIGTERM: unwind once (temp files removed), exit 130; a second one
    while unwinding or exiting is ignored (no traceback out of the shutdown)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def setup(device: str, views: str | None = None) -> "Dist | None":
    """Join torchrun's process group (env:// rendezvous from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    nccl on cuda:LOCAL_RANK, gloo on the CPU. None outside torchrun (or with one process)."""
    global _CURRENT
    if not launched():
        return None
    views = views or "shard"
    if views not in VIEWS:
        raise RobustferError(f"--ddp-views {views!r}: use shard or global")
    if _CURRENT is not None:  # a later run in the same processes: the same group, this run's views
        _CURRENT.views = views
        return _CURRENT
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RobustferError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: start several "
                             "processes with torchrun (torchrun --nproc-per-node N -m robustfer train ...)")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RobustferError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
        if local >= torch.cuda.device_count():
            raise RobustferError(f"rank {rank} has LOCAL_RANK {local} but {torch.cuda.device_count()} GPU(s) are visible: "
                                 f"start at most --nproc-per-node {torch.cuda.device_count()}")
        dev, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    atexit.register(teardown)  # one group per process: train / pretrain calls in it share it
    _CURRENT = Dist(rank, world, local, dev, views)
    return _CURRENT


def teardown() -> None:
    """Leave the process group set up by `setup` (at exit; not after a failed collective, which may hang)."""
    global _CURRENT
    if _CURRENT is not None and not _CURRENT.broken and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None


def is_comm_failure(e: BaseException) -> bool:
    """An error of a collective: a rank died or stopped answering (gloo / nccl / the store)."""
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timed out")))


def comm_error(e: BaseException, out) -> RobustferError:
    """The one line a rank prints when the job breaks under it."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:120]  # gloo's "[file:line] What happened. Hint"
    return RobustferError(f"rank {dist.get_rank() if dist.is_initialized() else '?'}: another rank of this torchrun job "
                          f"stopped or stopped answering ({first}); the job stops. {out}/last.pt keeps the last finished "
                          "epoch: continue with the same torchrun command and --resume (any number of processes)")


class LossStep(nn.Module):
    """What DDP wraps: forward(fn) = fn(network), the method's whole loss computed inside one DDP forward."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, fn):
        return fn(self.network)


def seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class Dist:
    """This rank's place in the job and the collectives the trainer needs."""

    def __init__(self, rank: int, world: int, local_rank: int, device: torch.device, views: str = "shard"):
        self.rank, self.world, self.local_rank, self.device, self.views = rank, world, local_rank, device, views
        self.main = rank == 0
        self.generator = torch.Generator(device=device)  # this rank's: shard views and the method's own draws
        self.ddp: nn.Module | None = None
        self.broken = False  # a collective failed: the group is not left cleanly at exit

    # ---- setting a run up ----
    def check_batch(self, batch_size: int, n: int) -> int:
        """The global batch, split evenly: --batch-size must be a multiple of the ranks (at least 2 images each,
        BatchNorm's minimum); a data set smaller than the batch gives the largest multiple that fits."""
        if batch_size % self.world or batch_size < 2 * self.world:
            raise RobustferError(f"--batch-size {batch_size} is the global batch of {self.world} ranks: use a multiple of "
                                 f"{self.world}, at least {2 * self.world} (2 images per rank)")
        bs = min(batch_size, n)
        bs -= bs % self.world
        if bs < 2 * self.world:
            raise RobustferError(f"{n} training images are too few for {self.world} ranks (at least 2 each)")
        return bs

    def steps(self, n: int, bs: int, drop_last: bool) -> int:
        """Steps per epoch: the last partial batch is cut to a multiple of the ranks, dropped below 2 per rank."""
        last = n % bs
        return n // bs + (0 if drop_last or last - last % self.world < 2 * self.world else 1)

    def wrap(self, model: nn.Module, sync_bn: bool = False, find_unused: bool = True) -> nn.Module:
        """DDP around LossStep(model) (rank 0's weights and buffers broadcast to all at once, buffers not again per
        forward: sync_buffers does that before evaluations); returns the model, whose BatchNorm layers are
        SyncBatchNorm with `sync_bn` (the same parameters: the optimiser's stay valid). `find_unused`: False only
        for methods that give every parameter a gradient in every step (Method.all_parameters_every_step)."""
        if sync_bn:
            if self.device.type != "cuda":
                raise RobustferError("--sync-bn needs CUDA ranks (torch's SyncBatchNorm runs on GPUs only); on the CPU "
                                     "leave it off: each rank's BatchNorm then normalises its own part of the batch")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        DDP = nn.parallel.DistributedDataParallel
        buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        self.ddp = DDP(LossStep(model), device_ids=None, find_unused_parameters=find_unused, **buffers)
        return model

    def start_epoch(self, seed: int, epoch: int, g: torch.Generator) -> None:
        """Seed this rank's generator and torch's own (dropout) from (seed, epoch, rank): exact on resume with the
        same number of ranks; check that the run's generator (the epoch order) agrees on every rank."""
        self.generator.manual_seed(seed_for(seed, epoch, self.rank, 1))
        torch.manual_seed(seed_for(seed, epoch, self.rank, 2))
        h = int(hashlib.sha1(g.get_state().numpy().tobytes()).hexdigest()[:15], 16)
        seen = self.gather_cat(torch.tensor([h], device=self.device), [1] * self.world)
        if not bool((seen == seen[0]).all()):
            raise RuntimeError("internal error: the ranks' epoch-order generators differ (please report)")

    # ---- one step ----
    def trim(self, idx: torch.Tensor) -> torch.Tensor:
        """A batch cut to a multiple of the ranks (only an epoch's last partial batch ever is)."""
        return idx[:len(idx) - len(idx) % self.world]

    def part(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's equal part of a (trimmed) batch."""
        k = len(t) // self.world
        return t[self.rank * k:(self.rank + 1) * k]

    def sync_step(self, state, stats: dict[str, torch.Tensor], mine: torch.Tensor,
                  idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """After a step: every rank's rows of the per-sample state written on every rank, and the per-sample stats
        of the whole batch `idx` (rank order = batch order) returned."""
        keys = sorted(state.tensors)
        per_sample = sorted(k for k, v in stats.items() if v.dim() == 1 and len(v) == len(mine))
        shape = torch.tensor([len(keys), len(per_sample), len(mine)], device=self.device)
        shapes = self.gather_cat(shape.unsqueeze(0), [1] * self.world)
        if not bool((shapes == shapes[0]).all()):
            raise RuntimeError(f"internal error: ranks disagree on method state / stats / part size {shapes.tolist()} "
                               f"(this rank: state {keys}, stats {per_sample}; please report)")
        sizes = [len(mine)] * self.world
        for k in keys:
            v = state.tensors[k]
            if v.dim() >= 1 and v.shape[0] == state.num_train:
                v[idx] = self.gather_cat(v[mine], sizes)
            else:
                dist.broadcast(v, 0)
        out = dict(stats)
        for k in per_sample:
            out[k] = self.gather_cat(stats[k].detach(), sizes)
        return out

    # ---- collectives ----
    def gather_cat(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every rank's `t` (rank r's with sizes[r] rows) concatenated in rank order, on every rank."""
        dtype = t.dtype
        send = t.to(torch.uint8) if dtype == torch.bool else t
        m = max(sizes)
        if send.shape[0] < m:
            send = torch.cat([send, send.new_zeros((m - send.shape[0],) + tuple(send.shape[1:]))])
        got = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(got, send.contiguous())
        return torch.cat([g[:s] for g, s in zip(got, sizes)]).to(dtype)

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def sync_buffers(self, *modules: nn.Module | None) -> None:
        """Rank 0's buffers (BatchNorm running statistics, the EMA's) on every rank."""
        for m in modules:
            if m is not None:
                for b in m.buffers():
                    dist.broadcast(b, 0)

    def predict(self, fn, images) -> torch.Tensor:
        """fn(images) of the whole split, computed in contiguous parts (one per rank) and gathered on every rank;
        `images` is a tensor or anything with len() and a window(start, stop) (streamed images)."""
        n = len(images)
        if n < self.world:
            return fn(images)
        bounds = np.linspace(0, n, self.world + 1).round().astype(int)
        a, b = int(bounds[self.rank]), int(bounds[self.rank + 1])
        out = fn(images[a:b] if torch.is_tensor(images) else images.window(a, b))
        return self.gather_cat(out, [int(bounds[r + 1] - bounds[r]) for r in range(self.world)])


def job(fn):
    """Decorates train() / pretrain(): under torchrun, a failed collective (a rank died or hangs) becomes one
    error line."""
    @functools.wraps(fn)
    def run(cfg, *args, **kwargs):
        try:
            return fn(cfg, *args, **kwargs)
        except BaseException as e:
            if _CURRENT is not None and (isinstance(e, KeyboardInterrupt) or is_comm_failure(e)):
                _CURRENT.broken = True
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop may follow: print the line, exit
                if not isinstance(e, KeyboardInterrupt):
                    raise comm_error(e, cfg.out) from None
            raise
    return run
