"""Training options: one dataclass, resolved once (recipe defaults filled in) and saved as config.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from robustfer.data import default_select_split
from robustfer.errors import RobustferError
from robustfer.models import DEFAULT_MODEL, model_entry

# The quick CPU protocol shared by every method in a CPU table (compact CNN, 48 px): SGD + one-cycle
# reaches the compact CNN's accuracy in few epochs; the same settings for every method keeps tables fair.
CPU_RECIPE = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle",
              "batch_size": 128, "epochs": 15, "drop_last": True}


class SavedConfig:
    """A config dataclass saved as a run folder's config.json and read back (train and pretrain share it)."""

    command = "train"  # the command whose run folders hold it, for the error line

    def save(self, path: Path, extra: dict) -> None:
        from robustfer.train.checkpoint import write_atomic  # a kill never leaves a torn config.json

        write_atomic(Path(path), json.dumps({**asdict(self), **extra}, indent=2, default=str))  # Paths from the Python API

    @classmethod
    def read_fields(cls, path: Path) -> dict:
        """config.json's entries that are fields of `cls` (the resolved extras are dropped)."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RobustferError(f"cannot read {path} ({e}): --resume needs the run folder of an earlier {cls.command}") from None
        names = {f.name for f in fields(cls)}
        return {k: v for k, v in raw.items() if k in names}

    @classmethod
    def load(cls, path: Path):
        return cls(**cls.read_fields(path))


@dataclass
class TrainConfig(SavedConfig):
    dataset: str
    root: str
    out: str
    method: str = "ce"
    model: str = DEFAULT_MODEL
    recipe: str | None = None          # official | cpu; default cpu for the compact model, else official
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None       # adam | sgd
    schedule: str | None = None        # constant | exp | onecycle | cosine | step
    milestones: list[int] | None = None  # schedule=step: lr x gamma at the START of each of these epochs
    sampler: str | None = None         # shuffle | balanced (class-balanced draws with replacement)
    momentum: float = 0.9
    gamma: float | None = None         # ExponentialLR factor for schedule=exp (default the recipe's, else 0.9)
    seed: int = 1
    device: str = "auto"
    precision: str = "auto"            # auto | fp32 | bf16
    input_size: int | None = None
    norm: str | None = None
    init: str | None = None
    limit: int | None = None
    offset: int | None = None          # skip the first N training images (before --limit)
    eval_limit: int | None = None      # first N evaluation images (smoke runs)
    noise: str | None = None           # TYPE:RATE[:SEED]
    noise_file: str | None = None
    imbalance: float | None = None     # long-tailed training subset: largest/smallest class = FACTOR
    label_mode: str = "majority"       # FERPlus label mode
    train_split: str = "train"
    eval_split: str = "test"
    cache_dir: str | None = None
    threads: int | None = None
    method_options: dict = field(default_factory=dict)
    drop_last: bool | None = None
    ema: float | None = None           # decay of an exponential moving average of the weights (evaluated, saved)
    eval_every: int = 1                # evaluate every K epochs (the last epoch always)
    select_split: str | None = None    # where `best` is chosen: a split, holdout, or test (on request); default
                                       # the data set's validation split, else holdout
    holdout: float = 0.1               # share of train held out for --select-split holdout
    fold: str | None = None            # I/K: train on the other folds, write fold I's probabilities (heldout.npz)
    data_in_memory: str | None = None  # auto | yes | no: training images on the device, or streamed from the
                                       # memory-mapped cache per batch (auto: by size against free memory)
    sync_bn: bool | None = None        # under torchrun: SyncBatchNorm over all ranks (CUDA)
    ddp_views: str | None = None       # under torchrun: shard (each rank augments its part) | global

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        raw = cls.read_fields(path)
        raw.setdefault("select_split", "test")  # run folders from before validation selection chose on test
        return cls(**raw)


def parse_noise(spec: str) -> tuple[str, float, int | None]:
    """'symmetric:0.3[:7]' -> ('symmetric', 0.3, 7)."""
    parts = spec.split(":")
    try:
        kind, rate = parts[0], float(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else None
    except (IndexError, ValueError):
        raise RobustferError(f"--noise {spec!r}: expected TYPE:RATE[:SEED], e.g. symmetric:0.3 or pair:0.2:7") from None
    if kind not in ("symmetric", "pair", "uneven"):
        raise RobustferError(f"--noise {spec!r}: the type must be symmetric, pair or uneven, e.g. symmetric:0.3")
    if not 0.0 <= rate < 1.0:  # also NaN
        raise RobustferError(f"--noise {spec!r}: the rate must lie in [0, 1), e.g. symmetric:0.3 for 30%")
    return kind, rate, seed


def check_counts(cfg) -> None:
    """Counts and sizes a config can hold only positive (an error line instead of a traceback or a silent
    full run for --limit 0): epochs, batch size, lr, --limit, --eval-limit, --threads, --input-size; --offset >= 0."""
    import math

    for name, low in (("epochs", 1), ("batch_size", 1), ("limit", 1), ("eval_limit", 1), ("threads", 1),
                      ("input_size", 1), ("offset", 0)):
        v = getattr(cfg, name, None)
        if v is not None and v < low:
            raise RobustferError(f"--{name.replace('_', '-')} {v}: must be {'positive' if low else '0 or more'}")
    lr = getattr(cfg, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise RobustferError(f"--lr {lr}: the learning rate must be a positive number, e.g. 0.01")


def resolve(cfg: TrainConfig, method_recipe: dict, cpu_recipe_ok: bool = True) -> TrainConfig:
    """Fill every unset option from the recipe (official = the method's, cpu = CPU_RECIPE).

    Default: cpu for the CPU models (compact*) when the method trains stably under plain SGD
    (`cpu_recipe_ok`), else the method's official recipe. The cpu recipe's epochs are the model's own
    (`ModelEntry.cpu_epochs`: what fits its time budget on 2 cores)."""
    from dataclasses import replace

    entry = model_entry(cfg.model)
    recipe = cfg.recipe or ("cpu" if entry.cpu_epochs and cpu_recipe_ok else "official")
    if recipe not in ("official", "cpu"):
        raise RobustferError(f"--recipe {recipe!r}: use official or cpu")
    cpu = {**CPU_RECIPE, "epochs": entry.cpu_epochs or CPU_RECIPE["epochs"]}
    base = {**method_recipe, **(cpu if recipe == "cpu" else {})}
    out = {"recipe": recipe}
    for key in ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "drop_last"):
        if getattr(cfg, key) is None:
            out[key] = base.get(key, {"drop_last": False}.get(key))
    if cfg.norm is None:
        out["norm"] = method_recipe.get("norm", "imagenet")
    if cfg.gamma is None:
        out["gamma"] = base.get("gamma", 0.9)
    if cfg.milestones is None:
        out["milestones"] = list(base.get("milestones", []))
    if cfg.sampler is None:
        out["sampler"] = base.get("sampler", "shuffle")
    if (cfg.sampler or out.get("sampler")) not in ("shuffle", "balanced"):
        raise RobustferError(f"--sampler {cfg.sampler!r}: use shuffle or balanced")
    if cfg.select_split is None:
        out["select_split"] = default_select_split(cfg.dataset)
    if not 0.0 < cfg.holdout < 1.0:
        raise RobustferError(f"--holdout {cfg.holdout}: the held-out share of train must lie in (0, 1), e.g. 0.1")
    if cfg.eval_every < 1:
        raise RobustferError(f"--eval-every {cfg.eval_every}: must be a positive number of epochs")
    if cfg.ema is not None and not 0.0 < cfg.ema < 1.0:
        raise RobustferError(f"--ema {cfg.ema}: the decay must lie in (0, 1), e.g. 0.999")
    if cfg.noise:
        parse_noise(cfg.noise)  # before the data is read
    if cfg.noise_file and not Path(cfg.noise_file).is_file():
        raise RobustferError(f"noise file {cfg.noise_file} does not exist: regenerate it with `robustfer noise` for "
                             f"this data set (--out {cfg.noise_file})")
    cfg = replace(cfg, **out)
    check_counts(cfg)
    return cfg
