"""The one trainer: every method runs through this loop. It owns devices, batches, the optimiser,
schedules, evaluation, checkpoints and logs; the method owns views and the loss."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

import robustfer
from robustfer.data.noise import write_noise_csv
from robustfer.data.stream import place_images, plan
from robustfer.errors import RobustferError, anomaly_error, check_finite_grad, check_finite_loss
from robustfer.evaluate import evaluate_predictions, mean_by_class, noise_detection
from robustfer.methods import Batch, Method, State, ViewSpec, create_method, method_class
from robustfer.models import create_backbone, extra_loss, load_init, model_defaults, regularisers
from robustfer.models.predict import predict_logits
from robustfer.train.checkpoint import (check_classes, load_checkpoint, plain, restore_checked, save_atomic, stamp,
                                        write_atomic)
from robustfer.train.config import TrainConfig, resolve
from robustfer.train.data import load_splits, split_fold
from robustfer.train import distributed
from robustfer.train.progress import EpochProgress


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RobustferError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


# `--precision auto` on CPUs with native bf16 (cpu_native_bf16): bf16 (issue 18, item 5). A resumed run keeps the
# precision it started with (resumed_precision); bench's results.md names each grid's precision and flags a mix.
AUTO_BF16_ON_NATIVE_CPU = True


def _cpu_flags() -> set[str]:
    """/proc/cpuinfo's CPU flags (Linux), or none."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX-512-BF16 or AMX tiles (torch.cpu's cpuinfo checks, else
    /proc/cpuinfo's flags) under torch's AVX-512 kernels (torch.backends.cpu.get_cpu_capability() 'AVX512').
    torch 2.14 reports no bf16 level there ('DEFAULT', 'AVX2', 'AVX512', 'SVE256'...); a capability that names
    one ('AVX512_BF16', 'AMX') counts by itself. Without it oneDNN emulates bf16: 16x slower than fp32 on an
    AVX2 EPYC (BENCHMARKS.md), while an AVX-512-BF16 EPYC ran compact-CNN steps 1.3-2x faster in bf16."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "BF16" in capability or "AMX" in capability:
        return True
    if not capability.startswith("AVX512"):
        return False
    checks = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(c is not None for c in checks):
        return any(c() for c in checks)
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 autocast on CUDA; on the CPU fp32, or bf16 where the CPU has native bf16 (cpu_native_bf16) and
    AUTO_BF16_ON_NATIVE_CPU is on. Training only: evaluation runs in fp32 (Run.evaluate)."""
    if name == "auto":
        native = device.type == "cpu" and AUTO_BF16_ON_NATIVE_CPU and cpu_native_bf16()
        return "bf16" if device.type == "cuda" or native else "fp32"
    if name not in ("fp32", "bf16"):
        raise RobustferError(f"--precision {name!r}: use auto, fp32 or bf16")
    return name


def resumed_precision(out: Path, resolved: str) -> str:
    """A continued run computes as it started (config.json's precision_resolved), whatever `auto` would pick on
    this machine or in this version; `resolved` for run folders from before that field."""
    try:
        saved = json.loads((Path(out) / "config.json").read_text()).get("precision_resolved")
    except (OSError, ValueError):
        saved = None
    return saved if saved in ("fp32", "bf16") else resolved


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the parameters' gradients: what clip_grad_norm_ measures, without clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def backward_checked(loss: torch.Tensor, params: list[torch.Tensor], what: str, epoch: int, step: int, lr: float,
                     out, fix: str = "lower --lr") -> float:
    """loss.backward(), then one clear line (RobustferError) on a NaN / inf loss or total gradient norm, before
    the optimiser step, so the weights and last.pt stay good; returns the gradient norm (train and pretrain log
    it per epoch). Under --detect-anomaly (torch.autograd.set_detect_anomaly) autograd's error, naming the
    backward function that returned NaN / inf, becomes that line too."""
    try:
        loss.backward()
    except RuntimeError as e:
        if torch.is_anomaly_enabled() and " returned " in str(e) and " values in its " in str(e):
            raise anomaly_error(e, what, epoch, step, lr, out, fix) from None
        raise
    check_finite_loss(loss, what, epoch, step, lr, out, fix)
    norm = grad_norm(params)
    check_finite_grad(norm, what, epoch, step, lr, out, fix)
    return norm.item()


def anomaly_mode(on: bool):
    """--detect-anomaly: torch.autograd.set_detect_anomaly around the run, so that the first backward function
    returning NaN / inf stops it with its name and the forward call behind it (a debugging aid: it checks every
    backward output and records every forward call, so it is slower); off: the global mode as it was."""
    return torch.autograd.set_detect_anomaly(True) if on else contextlib.nullcontext()


def grad_norm_figures(norms: list[float]) -> dict:
    """metrics.jsonl's per-epoch gradient-norm fields: mean and max of the steps' total norms."""
    return {"grad_norm_mean": float(np.mean(norms)), "grad_norm_max": float(np.max(norms))} if norms else {}


def make_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    raise RobustferError(f"--optimizer {cfg.optimizer!r}: use adam or sgd")


def make_schedule(cfg: TrainConfig, opt, steps_per_epoch: int):
    """(scheduler, steps per scheduler step: 'epoch' or 'batch')."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0), "epoch"
    if cfg.schedule == "exp":
        return torch.optim.lr_scheduler.ExponentialLR(opt, cfg.gamma), "epoch"
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=cfg.epochs * steps_per_epoch), "batch"
    if cfg.schedule == "step":  # x gamma at the START of each milestone epoch (0 included: from the first epoch)
        ms = list(cfg.milestones or [])
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: cfg.gamma ** sum(m <= e for m in ms)), "epoch"
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch), "batch"
    raise RobustferError(f"--schedule {cfg.schedule!r}: use constant, exp, onecycle, cosine or step")


def ema_decay(decay: float, n: int) -> float:
    """The EMA decay at update n (1-based): min(decay, (1 + n) / (10 + n)), TensorFlow's / timm's warm-up.

    Without it a 0.999 average still holds 0.999^1100 = 33% of the random initial weights after 5 short
    epochs (measured: 36.5% test accuracy, BENCHMARKS.md); with it the average follows the early weights."""
    return min(decay, (1.0 + n) / (10.0 + n))


def ema_warmup_fn(decay: float):
    """multi_avg_fn for AveragedModel: avg <- d avg + (1 - d) current, d = ema_decay(decay, n); integer
    buffers (BatchNorm's num_batches_tracked) are copied."""
    @torch.no_grad()
    def update(avg: list[torch.Tensor], cur: list[torch.Tensor], n_averaged) -> None:
        if torch.is_floating_point(avg[0]):
            torch._foreach_lerp_(avg, cur, 1.0 - ema_decay(decay, int(n_averaged)))
        else:
            torch._foreach_copy_(avg, cur)
    return update


class Run:
    """Everything one training run holds; built from a config, restorable from a checkpoint."""

    def __init__(self, cfg: TrainConfig, quiet: bool = False):
        self.quiet = quiet
        self.method: Method = create_method(cfg.method, cfg.dataset, **dict(cfg.method_options))
        self.cfg = cfg = resolve(cfg, method_class(cfg.method).recipe_for(cfg.dataset), self.method.cpu_recipe_ok)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = distributed.setup(cfg.device, cfg.ddp_views)  # under torchrun: this rank's place (else None)
        self.main = self.dist is None or self.dist.main  # the process that writes the run folder
        self.device = self.dist.device if self.dist else resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        size, chans = model_defaults(cfg.model)
        self.spec = ViewSpec(size=cfg.input_size or size, channels=chans, norm=cfg.norm, recipe=cfg.recipe)

        self.train_data, self.select_data, self.eval_data = load_splits(cfg)
        self.fold_data = None
        if cfg.fold:  # cross-fitting: fold I is predicted, never trained on
            self.train_data, self.fold_data = split_fold(self.train_data, cfg.fold, cfg.seed)
        if len(self.train_data) < 2:
            raise RobustferError(f"training split of {cfg.root} has {len(self.train_data)} images: need at least 2")
        dev = self.device
        self.images, self.in_memory = self.place(self.train_data.images, "training")  # or streamed per batch
        self.labels = torch.from_numpy(self.train_data.labels).to(dev)
        self.soft = None if self.train_data.soft is None else torch.from_numpy(self.train_data.soft).to(dev)
        self.votes = None if self.train_data.votes is None else torch.from_numpy(self.train_data.votes).to(dev)
        self.eval_images = self.place(self.eval_data.images, "evaluation")[0]
        self.select_images = None if self.select_data is None else self.place(self.select_data.images, "selection")[0]

        torch.manual_seed(cfg.seed)
        backbone = create_backbone(cfg.model, chans)
        self.init_skipped = load_init(backbone, cfg.init) if cfg.init else []
        self.model = self.method.build(backbone, self.train_data.num_classes, tuple(self.train_data.classes), self.spec).to(dev)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.regularisers = regularisers(self.model)  # modules with extra_loss(), found once
        # EMA of the weights AND the BatchNorm statistics (timm's ModelEmaV2 convention); evaluated and shipped
        self.ema = None if cfg.ema is None else torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=ema_warmup_fn(cfg.ema), use_buffers=True)
        self.opt = make_optimizer(cfg, self.method.param_groups(self.model, cfg.lr))
        self.params = [p for g in self.opt.param_groups for p in g["params"]]  # whose gradient norm is logged
        n = len(self.train_data)
        bs = min(cfg.batch_size, n) if self.dist is None else self.dist.check_batch(cfg.batch_size, n)
        self.batch_size = bs
        self.steps_per_epoch = n // bs if cfg.drop_last else math.ceil(n / bs)
        if self.dist is not None:  # DDP around the network; the global batch split evenly over the ranks
            self.steps_per_epoch = self.dist.steps(n, bs, cfg.drop_last)
            self.model = self.dist.wrap(self.model, bool(cfg.sync_bn), not self.method.all_parameters_every_step)
        self.sched, self.sched_unit = make_schedule(cfg, self.opt, self.steps_per_epoch)
        self.g = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.state = State(epoch=0, epochs=cfg.epochs, num_train=n, num_classes=self.train_data.num_classes,
                           label_mode=self.train_data.extra.get("label_mode", "majority"))
        self.history: list[dict] = []
        self.wall_before = 0.0

    def place(self, images, what: str):
        """(images on the device, or streamed from their memory map per batch; 'yes' / 'no'): --data-in-memory."""
        share = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.device.type == "cpu" else 1  # ranks on this host
        return place_images(images, self.device, self.cfg.data_in_memory, share, what, quiet=self.quiet or not self.main)

    # ---- checkpoints ----
    def checkpoint(self, epoch_done: int, wall: float) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "epoch": epoch_done, "step": self.state.step,
            "rng": {"generator": self.g.get_state(), "torch": torch.get_rng_state()},
            "method_state": {k: v.cpu() for k, v in self.state.tensors.items()},
            "history": plain(self.history), "wall_s": wall, "config": plain(asdict(self.cfg)),
            "classes": list(self.train_data.classes), "spec": asdict(self.spec), **stamp(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        if self.ema is not None:
            self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.g.set_state(ck["rng"]["generator"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.state.tensors = {k: v.to(self.device) for k, v in ck["method_state"].items()}
        self.state.epoch, self.state.step = ck["epoch"], ck["step"]
        self.history, self.wall_before = ck["history"], ck["wall_s"]

    # ---- one epoch ----
    def train_epoch(self, progress: EpochProgress) -> dict:
        cfg, st, dev = self.cfg, self.state, self.device
        self.model.train()
        n = len(self.labels)
        if self.dist is not None:  # seeds this rank's own generator; checks that the epoch order agrees
            self.dist.start_epoch(cfg.seed, st.epoch, self.g)
        perm = self.epoch_order(n)
        bs = self.batch_size
        plan(self.images, [self.rows_read(perm[b * bs:(b + 1) * bs]) for b in range(self.steps_per_epoch)])
        per_sample: dict[str, torch.Tensor] = {}
        total, seen, norms, t0 = 0.0, 0, [], time.perf_counter()
        for b in range(self.steps_per_epoch):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            views, idx, mine, g = self.batch_views(idx)  # mine: this process's part of the batch idx
            views = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views.items()}
            batch = Batch(views=views, labels=self.labels[mine], index=mine,
                          soft=None if self.soft is None else self.soft[mine],
                          votes=None if self.votes is None else self.votes[mine], generator=g)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                loss, stats = self.step_loss(batch)
            self.opt.zero_grad(set_to_none=True)
            norms.append(backward_checked(loss, self.params, cfg.method, st.epoch, b, cfg.lr, cfg.out,
                                          "lower --lr or check the labels"))
            self.opt.step()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                self.method.after_step(self.model, batch, st)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if self.sched_unit == "batch":
                self.sched.step()
            st.step += 1
            if self.dist is not None:  # every rank's per-sample state rows written on every rank; the batch's stats
                stats = self.dist.sync_step(st, stats, mine, idx)
            for k, v in stats.items():
                if v.dim() == 1 and len(v) == len(idx):
                    buf = per_sample.setdefault(k, torch.full((n,), float("nan"), device=dev))
                    buf[idx] = v.detach().float()
            total += loss.item() * len(idx)
            seen += len(idx)
            progress.advance(len(idx))
        dt = time.perf_counter() - t0
        if self.dist is not None:  # the ranks' mean loss; rank 0's BatchNorm statistics (and the EMA's) everywhere
            total = self.dist.mean(total)
            self.dist.sync_buffers(self.model, self.ema)
        lr = self.opt.param_groups[0]["lr"]
        if self.sched_unit == "epoch":
            self.sched.step()
        self.method.on_epoch_end(st)
        row = {"train_loss": total / max(seen, 1), "lr": lr, "images_per_s": seen / dt, **grad_norm_figures(norms)}
        row.update(self.noise_figures(per_sample))
        labels = self.labels.cpu().numpy()
        for k, v in per_sample.items():  # e.g. weight_mean_by_class: where the method's weight goes, per given label
            if k.endswith("argmax"):
                continue  # class indices: scored against the clean labels in noise_figures
            row[f"{k}_mean_by_class"] = mean_by_class(v.cpu().numpy(), labels, list(self.train_data.classes))
        self.last_samples = per_sample  # samples.npz (write_samples)
        return row

    def rows_read(self, idx: torch.Tensor) -> torch.Tensor:
        """The images of global batch `idx` this process reads: all of it, or under torchrun its part (shard views)
        or the whole batch cut to a multiple of the ranks (global views)."""
        if self.dist is None:
            return idx
        return self.dist.part(self.dist.trim(idx)) if self.dist.views == "shard" else self.dist.trim(idx)

    def batch_views(self, idx: torch.Tensor):
        """(views, batch, this process's part of it, generator for the method) of global batch `idx`. One process:
        the views of all of it, from the run's generator. Under torchrun (distributed.py): rank r's equal part,
        augmented alone with the rank's generator (shard), or cut from the whole batch's views (global)."""
        d = self.dist
        if d is None:
            return self.method.make_views(self.images[idx], self.g, self.spec), idx, idx, self.g
        idx = d.trim(idx)
        mine = d.part(idx)
        if d.views == "shard":
            return self.method.make_views(self.images[mine], d.generator, self.spec), idx, mine, d.generator
        views = self.method.make_views(self.images[idx], self.g, self.spec)
        return {k: d.part(v) for k, v in views.items()}, idx, mine, d.generator

    def step_loss(self, batch: Batch):
        """(loss + the network's regularisers, stats) of the method; under torchrun computed inside one
        DistributedDataParallel forward, so every model call the method makes is covered by its gradient averaging."""
        def loss_of(model):
            loss, stats = self.method.loss(model, batch, self.state)
            return loss + extra_loss(self.regularisers), stats  # regularisers the network carries (extra_loss())
        return loss_of(self.model) if self.dist is None else self.dist.ddp(loss_of)

    def epoch_order(self, n: int) -> torch.Tensor:
        """The epoch's sample order: a permutation, or (`--sampler balanced`) n draws with replacement, each
        sample weighted 1 / (count of its given class), as torchsampler's ImbalancedDatasetSampler."""
        if self.cfg.sampler != "balanced":
            return torch.randperm(n, generator=self.g, device=self.device)
        counts = torch.bincount(self.labels, minlength=self.state.num_classes).float()
        return torch.multinomial(1.0 / counts[self.labels], n, replacement=True, generator=self.g)

    def noise_figures(self, per_sample: dict[str, torch.Tensor]) -> dict:
        """Scores the method's per-sample flags/weights against the known flip mask (synthetic noise)."""
        flipped = self.train_data.flipped
        if flipped is None:
            return {}
        out = {"noise_rate": float(np.mean(flipped))}
        for k, v in per_sample.items():
            v = v.cpu().numpy()
            seen = ~np.isnan(v)
            if k == "flagged_noisy":
                out.update(noise_detection(v[seen] > 0.5, flipped[seen]))
            elif k.endswith("argmax"):  # a predicted class: how often it is the clean class of a flipped label
                hit = v == self.train_data.clean_labels
                out[f"{k}_clean_recovery"] = float(np.mean(hit[seen & flipped])) if np.any(seen & flipped) else None
                out[f"{k}_clean_agreement"] = float(np.mean(hit[seen & ~flipped])) if np.any(seen & ~flipped) else None
            else:
                out[f"{k}_mean_flipped"] = float(np.mean(v[seen & flipped])) if np.any(seen & flipped) else None
                out[f"{k}_mean_clean"] = float(np.mean(v[seen & ~flipped])) if np.any(seen & ~flipped) else None
        return out

    @property
    def test_model(self) -> torch.nn.Module:
        """The network evaluated and shipped: the method's test-time part, of the EMA weights when --ema is on."""
        return self.method.test_network(self.model if self.ema is None else self.ema.module)

    def evaluate(self, select: bool = False) -> dict:
        """Figures on the eval split, or (`select`) on the selection split; in fp32 whatever --precision trains
        in, as `robustfer eval`, predict and export compute, so that the figures do not depend on it."""
        images, data = (self.select_images, self.select_data) if select else (self.eval_images, self.eval_data)
        def predict(x):
            return predict_logits(self.test_model, x, self.spec.size, self.spec.channels, self.spec.norm)
        logits = predict(images) if self.dist is None else self.dist.predict(predict, images)  # torchrun: in parts
        scores = logits.cpu().numpy()
        # vote_kl, top_vote_prob, plausible_accuracy (T = 2) on softmax(logits) where the split has votes
        return evaluate_predictions(scores.argmax(1), data.labels, data.classes, scores, votes=data.votes)

    def evaluate_row(self) -> dict:
        """The per-epoch figures: test, and `select_*` on the selection split (= test's when selecting on test);
        the vote figures (VOTE_KEYS) too where the split has annotator votes."""
        ev = self.evaluate()
        row = {k: ev[k] for k in ("accuracy", "mean_class_accuracy", "top2_accuracy", "per_class_recall")}
        row.update({k: ev[k] for k in VOTE_KEYS if k in ev})
        sel = ev if self.select_data is None else self.evaluate(select=True)
        row.update(select_accuracy=sel["accuracy"], select_mean_class_accuracy=sel["mean_class_accuracy"])
        row.update({f"select_{k}": sel[k] for k in VOTE_KEYS if k in sel})
        return row


# The vote-aware figures (evaluate.vote_metrics) logged per evaluated epoch where the split has votes.
VOTE_KEYS = ("vote_kl", "top_vote_prob", "plausible_accuracy")

# Options that may differ between a run and its continuation without changing its results' meaning.
RESUMABLE_ANYWHERE = {"out", "threads", "cache_dir", "device", "data_in_memory"}


def check_same_settings(cfg: TrainConfig, saved_path: Path) -> None:
    """Refuse to continue a run folder trained with other settings than `cfg` asks for (unset options of
    `cfg` are whatever the saved run resolved them to)."""
    saved = json.loads(saved_path.read_text())
    diff = {f.name: (saved.get(f.name), getattr(cfg, f.name)) for f in fields(cfg)
            if f.name not in RESUMABLE_ANYWHERE and getattr(cfg, f.name) is not None
            and saved.get(f.name) != json.loads(json.dumps(getattr(cfg, f.name), default=str))}
    if diff:
        raise RobustferError(f"{saved_path.parent} was trained with other settings ({', '.join(f'{k}: saved {a!r}, asked {b!r}' for k, (a, b) in diff.items())}): "
                             "choose another --out, or drop --auto-resume to see the run as it is")


def open_run_folder(out: Path, cfg, config_cls, resume: bool, auto_resume: bool):
    """(config, checkpoint to continue from or None, summary of a finished run or None) for a run folder,
    shared by train and pretrain. `auto_resume`: a finished run with the same settings is returned, an
    interrupted one continued, one with other settings refused; `resume`: continue with the saved config;
    otherwise a folder that already holds a run is refused."""
    if auto_resume and (out / "config.json").exists() and (out / "last.pt").exists():
        check_same_settings(cfg, out / "config.json")
        if (out / "summary.json").exists():
            return cfg, None, json.loads((out / "summary.json").read_text())
        resume = True
    if resume:
        saved = config_cls.load(out / "config.json")
        if not (out / "last.pt").exists():  # stopped before its first checkpoint: nothing to continue
            raise RobustferError(f"{out} holds no checkpoint yet (last.pt; the run stopped during its first epoch): "
                                 "start it again with the command that made it (--auto-resume does so too)")
        return saved, load_checkpoint(out / "last.pt"), None
    if (out / "last.pt").exists():
        raise RobustferError(f"{out} already holds a run (last.pt): continue it with --resume or choose another --out")
    return cfg, None, None


@distributed.job
def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False, stop_after: int | None = None,
          auto_resume: bool = False, detect_anomaly: bool = False) -> dict:
    """Train (or continue) the run in cfg.out; returns summary.json's content.

    `auto_resume`: one idempotent call for schedulers: a finished run with the same settings is returned
    as it is, an interrupted one continued, anything else started. `stop_after` ends the call after that
    many epochs in total, as a kill at an epoch boundary would (used by the resume tests). `detect_anomaly`:
    autograd's anomaly mode around the epochs (anomaly_mode; not a setting of the run, so --resume takes it)."""
    out = Path(cfg.out)
    cfg, ck, finished = open_run_folder(out, cfg, TrainConfig, resume, auto_resume)
    if finished is not None:
        return finished
    resume = ck is not None
    run = Run(cfg, quiet=quiet)
    cfg = run.cfg
    out.mkdir(parents=True, exist_ok=True)
    if resume:  # the classifier's columns must still mean the same classes
        check_classes(ck.get("classes", run.train_data.classes), run.train_data.classes, out / "last.pt",
                      "resume on the data the run started with, or start a new run in another --out")
        restore_checked(run.restore, ck, out / "last.pt")
        run.precision = resumed_precision(out, run.precision)
    elif run.main:  # under torchrun only rank 0 writes the run folder
        cfg.save(out / "config.json", {"version": robustfer.__version__, "classes": list(run.train_data.classes),
                                       "device_resolved": str(run.device), "precision_resolved": run.precision,
                                       "input_size_resolved": run.spec.size, "input_channels": run.spec.channels,
                                       "train_images": len(run.train_data), "eval_images": len(run.eval_data),
                                       "select_images": None if run.select_data is None else len(run.select_data),
                                       "init_skipped_keys": run.init_skipped, "data_in_memory_resolved": run.in_memory,
                                       "world_size": 1 if run.dist is None else run.dist.world})
        (out / "train_images.txt").write_text("".join(f + "\n" for f in run.train_data.files))
        if cfg.select_split == "holdout":
            (out / "select_images.txt").write_text("".join(f + "\n" for f in run.select_data.files))
        d = run.train_data
        if d.flipped is not None:  # synthetic noise: the realised labels and flip mask, in the interface's format
            write_noise_csv(out / "noise.csv", d.files, d.classes, d.clean_labels, d.labels)
    from torch.utils.tensorboard import SummaryWriter

    start = run.state.epoch
    writer = SummaryWriter(str(out), purge_step=start) if run.main else None
    metrics_path = out / "metrics.jsonl"
    if run.main:
        _truncate_metrics(metrics_path, start, run.history)
    best = max((selection_score(h) for h in run.history if "accuracy" in h), default=-1.0)
    t_start = time.perf_counter()
    with EpochProgress(quiet=quiet or not run.main) as progress, anomaly_mode(detect_anomaly):
        for epoch in range(start, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                break
            run.state.epoch = epoch
            progress.start(f"epoch {epoch + 1}/{cfg.epochs}", run.steps_per_epoch * run.batch_size)
            row = {"epoch": epoch, **run.train_epoch(progress)}
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:  # the last epoch always
                row.update(run.evaluate_row())
            run.history.append(row)
            if not run.main:
                continue
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(k, v, epoch)
            writer.flush()
            wall = run.wall_before + time.perf_counter() - t_start
            ck = run.checkpoint(epoch + 1, wall)
            if "accuracy" in row and selection_score(row) > best:
                best = selection_score(row)
                save_atomic(ck, out / "best.pt")
            save_atomic(ck, out / "last.pt")
            write_samples(run, out / "samples.npz")
            progress.report(row)
    if writer is not None:
        writer.close()
    summary = summarize(run.history, run.wall_before + time.perf_counter() - t_start, cfg.select_split)
    if run.main and run.history and len(run.history) == cfg.epochs and run.fold_data is not None:
        write_heldout(run, out / "heldout.npz")
    if run.main and run.history and len(run.history) == cfg.epochs:
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))  # bench reads it as "cell done"
    return summary if run.main else {}  # under torchrun rank 0 reports


def write_heldout(run: Run, path: Path) -> None:
    """The last model's softmax probabilities on the held-out fold, with its files, given labels and, under
    synthetic noise, clean labels and flip mask (what cleanlab's find_label_issues needs)."""
    d = run.fold_data
    images = torch.from_numpy(np.array(d.images)).to(run.device)
    logits = predict_logits(run.test_model, images, run.spec.size, run.spec.channels, run.spec.norm)
    probs = torch.softmax(logits.float(), 1).cpu().numpy()
    extra = {} if d.flipped is None else {"clean_labels": d.clean_labels, "flipped": d.flipped}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, files=np.array(d.files), labels=d.labels, probs=probs, classes=np.array(d.classes), **extra)
    tmp.replace(path)


def write_samples(run: Run, path: Path) -> None:
    """The last epoch's per-sample statistics of the method (flagged_noisy, weight, label_prob, argmax, ...; NaN
    where a sample was not drawn) with the given labels, and under synthetic noise the clean labels and flip
    mask: what `robustfer report` plots the training features by. Rewritten every epoch, atomically."""
    d = run.train_data
    extra = {} if d.flipped is None else {"clean_labels": d.clean_labels, "flipped": d.flipped}
    stats = {f"stat_{k}": v.cpu().numpy() for k, v in getattr(run, "last_samples", {}).items()}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, labels=run.labels.cpu().numpy(), epoch=run.state.epoch, **extra, **stats)
    tmp.replace(path)


def _truncate_metrics(path: Path, epochs_done: int, history: list[dict] | None = None) -> None:
    """Keep the first `epochs_done` lines (an epoch logged but not checkpointed is trained again). With
    `history` (the checkpoint's rows of those epochs) the file is rewritten from it: a file that a kill
    left empty or cut gets its rows back. Written atomically, so a kill here cannot lose rows either."""
    if history is not None and len(history) == epochs_done:
        lines = [json.dumps(row) for row in history]
    elif path.exists():
        lines = path.read_text().splitlines()[:epochs_done]
    else:
        return
    write_atomic(path, "".join(line + "\n" for line in lines))


def selection_score(row: dict, key: str = "accuracy") -> float:
    """The figure `best` maximises: the selection split's (select_*), or test's in rows from before it."""
    return row.get(f"select_{key}", row[key])


def summarize(history: list[dict], wall: float, selected_on: str | None = "test") -> dict:
    """summary.json: last, best and last5 (EAC's mean of the last 5 evaluated epochs) blocks. `best` (and
    `best_mean_class`) is the epoch of the best selection-split accuracy (mean-class accuracy), with the
    test figures at that epoch; `selected_on` names the selection split. The vote figures (VOTE_KEYS, and
    their select_* twins) join each block where the rows have them, and last5 where all 5 rows do."""
    evaluated = [h for h in history if "accuracy" in h]  # --eval-every: epochs without evaluation
    if not evaluated:
        return {}

    def pick(h: dict) -> dict:
        return {"epoch": h["epoch"], "accuracy": h["accuracy"], "mean_class_accuracy": h["mean_class_accuracy"],
                **{k: h[k] for k in ("select_accuracy", "select_mean_class_accuracy") if k in h},
                **{k: h[k] for k in VOTE_KEYS + tuple(f"select_{v}" for v in VOTE_KEYS) if k in h}}

    best = max(evaluated, key=selection_score)
    best_mca = max(evaluated, key=lambda h: selection_score(h, "mean_class_accuracy"))
    tail = evaluated[-5:]
    return {
        "last": pick(evaluated[-1]), "best": pick(best), "best_mean_class": pick(best_mca), "selected_on": selected_on,
        "last5": {"accuracy": float(np.mean([h["accuracy"] for h in tail])),
                  "mean_class_accuracy": float(np.mean([h["mean_class_accuracy"] for h in tail])),
                  **{k: float(np.mean([h[k] for h in tail])) for k in VOTE_KEYS if all(k in h for h in tail)}},
        "epochs": len(history), "wall_s": wall,
        "images_per_s": float(np.mean([h["images_per_s"] for h in history])),
    }
