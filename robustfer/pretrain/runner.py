"""The pre-training loop: images only (no label ever leaves the reader), an objective, an optimiser with a
per-step warm-up + cosine schedule, and the trainer's atomic checkpoints, exact resume and progress bar.

Run folder: config.json, train_images.txt (what bench's disjointness check reads), metrics.jsonl (epoch,
loss, lr, images_per_s, grad_norm_mean / grad_norm_max, the objective's figures such as SimSiam's
feature_std), last.pt (the BACKBONE's state_dict under "model", which `train --init RUN/last.pt` loads, plus
everything a resume needs) and, once all epochs are done, summary.json.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

import robustfer
from robustfer.data import load_dataset
from robustfer.data.stream import place_images, plan
from robustfer.errors import RobustferError
from robustfer.methods.base import ViewSpec
from robustfer.models import DEFAULT_MODEL, create_backbone, model_defaults, model_entry
from robustfer.pretrain import create_objective, objective_class
from robustfer.train.checkpoint import plain, restore_checked, save_atomic, stamp, write_atomic
from robustfer.train import distributed
from robustfer.train.config import SavedConfig
from robustfer.train.progress import EpochProgress
from robustfer.train.trainer import (_truncate_metrics, anomaly_mode, backward_checked, grad_norm_figures, open_run_folder,
                                     resolve_device, resolve_precision, resumed_precision)

DEFAULT_MODELS = {"mae": "vit_s"}  # else the default CNN
OBJECTIVE_OPTIONS = ("mask_ratio", "decoder_depth", "decoder_dim", "decoder_heads", "proj_dim", "pred_dim")


@dataclass
class PretrainConfig(SavedConfig):
    command = "pretrain"  # not a field (no annotation): names the command in SavedConfig's error line
    dataset: str
    root: str
    out: str
    objective: str = "mae"
    model: str | None = None           # default: vit_s for mae, the default CNN otherwise
    epochs: int | None = None          # None: the objective's recipe
    batch_size: int | None = None
    lr: float | None = None            # default: the recipe's base lr x batch_size / 256 (both papers' rule)
    weight_decay: float | None = None
    optimizer: str | None = None       # adamw | sgd
    momentum: float = 0.9              # SGD momentum
    warmup_epochs: float | None = None
    mask_ratio: float | None = None    # mae
    decoder_depth: int | None = None   # mae
    decoder_dim: int | None = None     # mae
    decoder_heads: int | None = None   # mae
    proj_dim: int | None = None        # simsiam
    pred_dim: int | None = None        # simsiam
    seed: int = 1
    device: str = "auto"
    precision: str = "auto"            # auto | fp32 | bf16
    threads: int | None = None
    cache_dir: str | None = None
    input_size: int | None = None
    norm: str = "imagenet"             # the input normalisation; use the one the later train runs use
    label_mode: str = "majority"       # FERPlus: decides which images the reader keeps, so that --offset means
                                       # the same images as in train; the labels themselves are never read
    train_split: str = "train"
    offset: int | None = None          # skip the first N training images (pretrain on images a bench never uses)
    limit: int | None = None           # then use N images
    data_in_memory: str | None = None  # auto | yes | no: as train's (streamed from the memory-mapped cache per batch)



def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Every unset option from the objective's recipe; options of another objective are an error."""
    cls = objective_class(cfg.objective)
    for name in OBJECTIVE_OPTIONS:
        if getattr(cfg, name) is not None and name not in cls.options:
            raise RobustferError(f"--{name.replace('_', '-')} is an option of another objective, not of "
                                 f"{cfg.objective} (its options: {', '.join(cls.options) or 'none'})")
    model = cfg.model or DEFAULT_MODELS.get(cfg.objective, DEFAULT_MODEL)
    model_entry(model)
    out = {"model": model}
    for key in ("epochs", "batch_size", "weight_decay", "optimizer"):
        if getattr(cfg, key) is None:
            out[key] = cls.recipe[key]
    cfg = replace(cfg, **out)
    if cfg.warmup_epochs is None:  # a share of the epochs (MAE: 40 of 800), so that short runs warm up too
        cfg = replace(cfg, warmup_epochs=cls.recipe["warmup_fraction"] * cfg.epochs)
    if cfg.lr is None:
        cfg = replace(cfg, lr=cls.recipe["base_lr"] * cfg.batch_size / 256)
    if cfg.optimizer not in ("adamw", "sgd"):
        raise RobustferError(f"--optimizer {cfg.optimizer!r}: use adamw or sgd")
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.lr <= 0 or cfg.warmup_epochs < 0:
        raise RobustferError(f"--epochs {cfg.epochs} / --batch-size {cfg.batch_size} / --lr {cfg.lr} / --warmup-epochs "
                             f"{cfg.warmup_epochs}: need epochs >= 1, batch size >= 2, lr > 0, warm-up >= 0")
    return cfg


def load_images(cfg: PretrainConfig) -> tuple[np.ndarray, list[str]]:
    """(uint8 N x C x H x W images, their files) of the training split, images OFFSET..OFFSET+LIMIT as train's
    --offset/--limit select them. Only `images` and `files` of the reader's result are touched: the labels,
    votes and soft targets stay behind."""
    kw = {"cache_dir": Path(cfg.cache_dir) if cfg.cache_dir else None}
    if cfg.dataset == "ferplus":
        kw["label_mode"] = cfg.label_mode
    data = load_dataset(cfg.dataset, cfg.root, cfg.train_split, **kw)
    images, files = data.images, data.files
    start = min(cfg.offset or 0, len(files))
    stop = min(start + cfg.limit, len(files)) if cfg.limit else len(files)
    return images[start:stop], list(files[start:stop])  # still the cache's memory map: PretrainRun places them


def warmup_cosine(total: int, warmup: int):
    """lr factor per optimiser step: linear warm-up to 1 over `warmup` steps, then a half cosine to 0 (MAE)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


class PretrainRun:
    """Everything one pre-training run holds; built from a config, restorable from a checkpoint."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg = resolve(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = distributed.setup(cfg.device)  # under torchrun: this rank's place (else None)
        self.main = self.dist is None or self.dist.main  # the process that writes the run folder
        self.device = dev = self.dist.device if self.dist else resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, dev)
        size, chans = model_defaults(cfg.model)
        self.spec = ViewSpec(size=cfg.input_size or size, channels=chans, norm=cfg.norm, recipe="pretrain")
        images, self.files = load_images(cfg)  # grey/colour conversion: on the device (augment.to_float)
        if len(images) < 2:
            raise RobustferError(f"training split of {cfg.root} has {len(images)} images after --offset/--limit: need at least 2")
        share = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dev.type == "cpu" else 1  # ranks on this host
        self.images, self.in_memory = place_images(images, dev, cfg.data_in_memory, share, quiet=not self.main)
        torch.manual_seed(cfg.seed)
        opts = {k: getattr(cfg, k) for k in OBJECTIVE_OPTIONS}
        self.objective = create_objective(cfg.objective, create_backbone(cfg.model, chans), self.spec, **opts).to(dev)
        self.objective = self.objective.to(memory_format=torch.channels_last)
        groups = self.objective.param_groups(cfg.weight_decay)
        if cfg.optimizer == "adamw":  # MAE's betas
            self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
        else:
            self.opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]  # whose gradient norm is logged
        n = len(self.images)
        self.batch_size = bs = min(cfg.batch_size, n) if self.dist is None else self.dist.check_batch(cfg.batch_size, n)
        self.steps_per_epoch = n // bs  # the last partial batch is dropped (BatchNorm on a tiny batch)
        if self.dist is not None:  # DDP around the objective; each rank trains on its equal part of every batch
            self.objective = self.dist.wrap(self.objective, find_unused=not self.objective.all_parameters_every_step)
        total = cfg.epochs * self.steps_per_epoch
        schedule = warmup_cosine(total, round(cfg.warmup_epochs * self.steps_per_epoch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, [(lambda s: 1.0) if grp.get("fixed_lr") else schedule for grp in self.opt.param_groups])
        self.g = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.wall_before = 0.0

    def checkpoint(self, epoch_done: int, wall: float) -> dict:
        return {
            "kind": "pretrain", "model": self.objective.backbone.state_dict(),
            "objective": self.objective.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "epoch": epoch_done, "step": self.step,
            "rng": {"generator": self.g.get_state(), "torch": torch.get_rng_state()},
            "history": plain(self.history), "wall_s": wall, "config": plain(asdict(self.cfg)), "spec": asdict(self.spec),
            **stamp(),
        }

    def restore(self, ck: dict) -> None:
        self.objective.load_state_dict(ck["objective"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.g.set_state(ck["rng"]["generator"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.epoch, self.step = ck["epoch"], ck["step"]
        self.history, self.wall_before = ck["history"], ck["wall_s"]

    def train_epoch(self, progress: EpochProgress) -> dict:
        dev, bs = self.device, self.batch_size
        self.objective.train()
        d = self.dist
        if d is not None:  # seeds this rank's generator (its views); checks that the epoch order agrees
            d.start_epoch(self.cfg.seed, self.epoch, self.g)
        perm = torch.randperm(len(self.images), generator=self.g, device=dev)
        rows = [perm[b * bs:(b + 1) * bs] if d is None else d.part(perm[b * bs:(b + 1) * bs])
                for b in range(self.steps_per_epoch)]  # this process's images of each batch
        plan(self.images, rows)
        total, seen, sums, norms, t0 = 0.0, 0, {}, [], time.perf_counter()
        for b in range(self.steps_per_epoch):
            x = self.images[rows[b]]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                if d is None:
                    loss, stats = self.objective.loss(x, self.g)  # images and the generator: nothing else
                else:  # inside one DDP forward, with the rank's own generator
                    loss, stats = d.ddp(lambda objective: objective.loss(x, d.generator))
            self.opt.zero_grad(set_to_none=True)
            norms.append(backward_checked(loss, self.params, self.cfg.objective, self.epoch, b, self.cfg.lr, self.cfg.out))
            lr = self.opt.param_groups[0]["lr"]  # the rate this step used (the last step's is logged)
            self.opt.step()
            self.sched.step()
            self.step += 1
            total += loss.item() * len(x)
            seen += len(x)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
            progress.advance(len(x) * (1 if d is None else d.world))
        dt = time.perf_counter() - t0
        if d is not None:  # means over the ranks (equal parts); rank 0's BatchNorm statistics everywhere
            total, sums = d.mean(total), {k: d.mean(v) for k, v in sorted(sums.items())}
            d.sync_buffers(self.objective)
            seen *= d.world
        return {"loss": total / seen, "lr": lr, "images_per_s": seen / dt,
                **{k: v / seen for k, v in sums.items()}, **grad_norm_figures(norms)}


@distributed.job
def pretrain(cfg: PretrainConfig, resume: bool = False, quiet: bool = False, stop_after: int | None = None,
             auto_resume: bool = False, detect_anomaly: bool = False) -> dict:
    """Pre-train (or continue) the run in cfg.out; returns summary.json's content (empty if unfinished).
    `auto_resume`, `stop_after` and `detect_anomaly` as for train()."""
    out = Path(cfg.out)
    cfg, ck, finished = open_run_folder(out, cfg, PretrainConfig, resume, auto_resume)
    if finished is not None:
        return finished
    resume = ck is not None
    if resume and ck.get("kind") != "pretrain":
        raise RobustferError(f"{out / 'last.pt'} was written by `robustfer train`, not `pretrain`: continue it with train --resume")
    run = PretrainRun(cfg)
    cfg = run.cfg
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        restore_checked(run.restore, ck, out / "last.pt")
        run.precision = resumed_precision(out, run.precision)
    elif run.main:  # under torchrun only rank 0 writes the run folder
        cfg.save(out / "config.json", {"version": robustfer.__version__, "device_resolved": str(run.device),
                                       "precision_resolved": run.precision, "input_size_resolved": run.spec.size,
                                       "input_channels": run.spec.channels, "train_images": len(run.images),
                                       "steps_per_epoch": run.steps_per_epoch, "labels_used": False,
                                       "data_in_memory_resolved": run.in_memory,
                                       "world_size": 1 if run.dist is None else run.dist.world})
        (out / "train_images.txt").write_text("".join(f + "\n" for f in run.files))
    metrics_path = out / "metrics.jsonl"
    if run.main:
        _truncate_metrics(metrics_path, run.epoch, run.history)
    t_start = time.perf_counter()
    with EpochProgress(quiet=quiet or not run.main) as progress, anomaly_mode(detect_anomaly):
        for epoch in range(run.epoch, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                break
            run.epoch = epoch
            progress.start(f"{cfg.objective} epoch {epoch + 1}/{cfg.epochs}", run.steps_per_epoch * run.batch_size)
            row = {"epoch": epoch, **run.train_epoch(progress)}
            run.history.append(row)
            if run.main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                save_atomic(run.checkpoint(epoch + 1, run.wall_before + time.perf_counter() - t_start), out / "last.pt")
            run.epoch = epoch + 1
            if not quiet and run.main:
                progress.console.print(epoch_line(row, run.objective))
    wall = run.wall_before + time.perf_counter() - t_start
    if len(run.history) < cfg.epochs or not run.main:  # under torchrun rank 0 reports
        return {}
    summary = {"objective": cfg.objective, "model": cfg.model, "epochs": len(run.history),
               "train_images": len(run.images), "loss_first": run.history[0]["loss"], "loss_last": run.history[-1]["loss"],
               "wall_s": wall, "images_per_s": float(np.mean([h["images_per_s"] for h in run.history])),
               "checkpoint": str(out / "last.pt")}
    if "feature_std" in run.history[-1]:
        summary.update(feature_std_last=run.history[-1]["feature_std"],
                       feature_std_uniform=1.0 / math.sqrt(run.objective.proj_dim))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def epoch_line(row: dict, objective) -> str:
    extra = ""
    if "feature_std" in row:
        ideal = 1.0 / math.sqrt(objective.proj_dim)
        extra = f"  feature std {row['feature_std']:.4f} (spread {ideal:.4f}{', COLLAPSING' if row['feature_std'] < 0.5 * ideal else ''})"
    return (f"epoch {row['epoch'] + 1}: loss {row['loss']:.4f}{extra}  lr {row['lr']:.2e}  "
            f"{row['images_per_s']:.0f} img/s")


def pretrain_argv(cfg: PretrainConfig) -> list[str]:
    """The `robustfer pretrain` arguments that rebuild `cfg` (options at their defaults are left out);
    idempotent (--auto-resume) and quiet, as bench's cells."""
    defaults = PretrainConfig(dataset="", root="", out="")
    argv = ["pretrain"]
    for f in fields(PretrainConfig):
        v = getattr(cfg, f.name)
        if f.name not in ("dataset", "root", "out", "objective") and v == getattr(defaults, f.name):
            continue
        argv += ["--" + f.name.replace("_", "-"), str(v)]
    return argv + ["--auto-resume", "--quiet"]
