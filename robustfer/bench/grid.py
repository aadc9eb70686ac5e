"""A benchmark grid as a list of cells, each one ordinary `robustfer train` command (DomainBed style).

A grid = methods x noise settings x seeds x sweeps (any train option with a list of values, e.g.
imbalance factors or models), plus, for every method whose optimisation recipe differs from CE's, a CE
control trained at that recipe with CE's own view, plus an optional pretraining stage whose checkpoint
every cell starts from. Pure: expanding a grid reads no data and trains nothing.
"""
from __future__ import annotations

import itertools
import json
import shlex
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from robustfer.errors import RobustferError
from robustfer.methods import METHODS, create_method
from robustfer.train.config import TrainConfig, resolve

# What makes a recipe: the options a CE control copies from its method (not the views, not the loss).
RECIPE_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "schedule", "gamma", "batch_size", "epochs",
               "drop_last", "norm", "milestones", "sampler")
# Options a grid cannot set per cell: bench owns them.
OWNED = {"out", "method", "noise", "seed"}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


@dataclass(frozen=True)
class Cell:
    """One train run of the grid: its name (the folder under OUT/cells), the TrainConfig options, and
    what it is in the table."""

    name: str
    options: dict
    method: str
    noise: str                      # 'symmetric:0.3', or 'clean'
    seed: int
    control_of: tuple[str, ...] = ()
    sweep: dict = field(default_factory=dict)
    role: str = "method"            # method | control | crossfit (a cleanlab fold, not a table row)

    def config(self, out: Path) -> TrainConfig:
        return TrainConfig(**{**self.options, "out": str(out / "cells" / self.name)})


@dataclass
class Grid:
    """The parsed grid: shared train options, methods, noise settings, seeds, sweeps, per-method options."""

    train: dict
    methods: list[str]
    noise: list[str]
    seeds: list[int]
    sweep: dict = field(default_factory=dict)              # option -> list of values (cartesian product)
    method_train: dict = field(default_factory=dict)       # method -> its own train options (its recipe)
    controls: bool = True
    scale_warmup: bool = True
    pretrain: dict | None = None                           # train options of the stage, or {"checkpoint": P}
    cleanlab: dict | None = None                           # {"folds": K, "epochs": E, other CE train options}
    variants: dict = field(default_factory=dict)           # row name -> {"method": M, its train options}


def parse_noise_list(values: list, default_type: str = "symmetric") -> list[str]:
    """[0, 0.3, 'pair:0.3'] -> ['clean', 'symmetric:0.3', 'pair:0.3'] (a rate alone takes `default_type`)."""
    out = []
    for v in values:
        s = str(v).strip()
        kind, _, rate = s.rpartition(":") if ":" in s else (default_type, "", s)
        try:
            r = float(rate)
        except ValueError:
            raise RobustferError(f"noise setting {s!r}: expected RATE or TYPE:RATE, e.g. 0.3 or pair:0.3") from None
        if kind not in ("symmetric", "pair", "uneven"):
            raise RobustferError(f"noise setting {s!r}: the type must be symmetric, pair or uneven")
        if not 0.0 <= r < 1.0:
            raise RobustferError(f"noise setting {s!r}: the rate must lie in [0, 1)")
        out.append("clean" if r == 0 else f"{kind}:{r:g}")
    return list(dict.fromkeys(out))


def load_grid_file(path: str | Path) -> dict:
    """A grid .toml file as a dict (stdlib tomllib); errors name the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise RobustferError(f"cannot read the grid file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise RobustferError(f"{path}: not valid TOML ({e})") from None


def make_grid(raw: dict, source: str = "the grid") -> Grid:
    """Grid from a dict with the .toml file's keys (the CLI builds the same dict):

        methods = ["ce", "ncctfer"]; noise = [0, 0.3, "pair:0.3"]; noise_type = "symmetric"; seeds = [1, 2]
        controls = true; scale_warmup = true
        [train]    any train option for every cell (dataset, root, model, epochs, limit, method_options...)
        [sweep]    option = [values...]  (imbalance = [10, 50], model = ["compact_s", "compact"], ...)
        [method.NAME]  train options of that method only (lr, batch_size, method_options = {k = 3} ...)
        [variant.NAME] method = "pll" and train options: a row of its own (e.g. pll at min_votes 1, CE with
                   --label-mode probability); NAME goes in `methods`
        [pretrain] train options of a stage run once (method ce, offset ...), or checkpoint = "path.pt", or
                   objective = "mae"|"simsiam" and pretrain options: a label-free `robustfer pretrain` stage
        [cleanlab] folds = K, epochs = E (and any CE train option): cleanlab on K-fold cross-fitted CE
                   probabilities of each noisy training set, scored beside the methods' flags
    """
    known = {"methods", "noise", "noise_type", "seeds", "controls", "scale_warmup", "train", "sweep", "method",
             "pretrain", "cleanlab", "variant"}
    unknown = set(raw) - known
    if unknown:
        raise RobustferError(f"{source}: unknown key(s) {sorted(unknown)}; use {sorted(known)}")
    train = dict(raw.get("train", {}))
    for key in ("dataset", "root"):
        if key not in train:
            raise RobustferError(f"{source}: needs {key} (--{key} or [train] {key} = ...)")
    methods = [str(m) for m in raw.get("methods", ["ce"])]
    variants = {str(n): dict(o) for n, o in raw.get("variant", {}).items()}
    for n, o in variants.items():
        if n in METHODS or str(o.get("method")) not in METHODS:
            raise RobustferError(f"{source}: [variant.{n}] needs a name that is not a method and method = one of "
                                 f"{', '.join(METHODS)}")
        _check_options({k: v for k, v in o.items() if k != "method"}, f"{source} [variant.{n}]")
    for m in methods:
        if m not in METHODS and m not in variants:
            raise RobustferError(f"{source}: unknown method {m!r}; `robustfer methods` lists them: {', '.join(METHODS)}")
    _check_options(train, f"{source} [train]")
    sweep = {k: list(v) if isinstance(v, list) else [v] for k, v in raw.get("sweep", {}).items()}
    _check_options({k: v[0] for k, v in sweep.items() if v}, f"{source} [sweep]")
    method_train = {m: dict(o) for m, o in raw.get("method", {}).items()}
    for m, o in method_train.items():
        if m not in METHODS:
            raise RobustferError(f"{source}: [method.{m}] names no method; use one of {', '.join(METHODS)}")
        _check_options(o, f"{source} [method.{m}]")
    pretrain = raw.get("pretrain")
    if pretrain is not None and "objective" in pretrain:  # label-free stage: `robustfer pretrain`
        _check_pretrain_options(pretrain, f"{source} [pretrain]")
    elif pretrain is not None and "checkpoint" not in pretrain:
        _check_options({k: v for k, v in pretrain.items() if k != "method"}, f"{source} [pretrain]")
    cleanlab = raw.get("cleanlab")
    if cleanlab is not None:
        cleanlab = dict(cleanlab)
        if int(cleanlab.get("folds", 0)) < 2:
            raise RobustferError(f"{source} [cleanlab]: folds must be at least 2 (k-fold cross-fitting)")
        _check_options({k: v for k, v in cleanlab.items() if k != "folds"}, f"{source} [cleanlab]")
    seeds = [int(s) for s in raw.get("seeds", [1])]
    return Grid(cleanlab=cleanlab, train=train, methods=methods, noise=parse_noise_list(raw.get("noise", [0]), raw.get("noise_type", "symmetric")),
                seeds=seeds, sweep=sweep, method_train=method_train, controls=bool(raw.get("controls", True)),
                scale_warmup=bool(raw.get("scale_warmup", True)), pretrain=pretrain, variants=variants)


def _check_pretrain_options(opts: dict, where: str) -> None:
    from robustfer.pretrain import PretrainConfig, objective_class

    objective_class(str(opts["objective"]))
    bad = set(opts) - ({f.name for f in fields(PretrainConfig)} - {"out"})  # bench sets --out
    if bad:
        raise RobustferError(f"{where}: {sorted(bad)} are not pretrain options; see `robustfer pretrain --help`")


def _check_options(opts: dict, where: str) -> None:
    bad = set(opts) - TRAIN_FIELDS
    if bad:
        raise RobustferError(f"{where}: {sorted(bad)} are not train options; see `robustfer train --help`")
    owned = set(opts) & OWNED
    if owned:
        raise RobustferError(f"{where}: {sorted(owned)} are set by the grid itself (methods, noise, seeds, --out)")


def resolved(options: dict, method: str) -> TrainConfig:
    """The options as `train` will resolve them for `method` (its recipe filled in)."""
    cls = METHODS[method]
    return resolve(TrainConfig(**{**options, "method": method, "out": ""}), cls.recipe_for(options.get("dataset")),
                   cls.cpu_recipe_ok)


def recipe_of(cfg: TrainConfig) -> dict:
    """The optimisation recipe of a resolved config (gamma and milestones only where the schedule uses them,
    momentum only for SGD, the sampler only where it is not the plain shuffle)."""
    r = {k: getattr(cfg, k) for k in RECIPE_KEYS}
    if r["schedule"] not in ("exp", "step"):
        r.pop("gamma")
    if r["schedule"] != "step":
        r.pop("milestones")
    if r["sampler"] == "shuffle":  # the default: left out, so the grids written before it keep their commands
        r.pop("sampler")
    if r["optimizer"] != "sgd":
        r.pop("momentum")
    return r


def scaled_warmup(method: str, options: dict) -> dict:
    """The method's warm-up scaled from its official epochs to this cell's (at least 1), when it has one."""
    cls = METHODS[method]
    m = create_method(method, options.get("dataset"), **options.get("method_options", {}))
    if not hasattr(m, "warmup") or "warmup" in options.get("method_options", {}):
        return {}
    epochs = resolved(options, method).epochs
    return {"warmup": max(1, round(m.warmup * epochs / cls.recipe_for(options.get("dataset"))["epochs"]))}


def _tag(value) -> str:
    return str(value).replace("/", "-").replace(" ", "").replace(":", "")


def cell_name(method: str, noise: str, seed: int, sweep: dict, control_of: tuple[str, ...] = ()) -> str:
    head = f"ce@{'+'.join(control_of)}" if control_of else method
    noise_tag = "clean" if noise == "clean" else noise.replace(":", "")
    extra = "".join(f"_{k}{_tag(v)}" for k, v in sweep.items())
    return f"{head}_{noise_tag}{extra}_s{seed}"


def row_method(grid: Grid, name: str) -> str:
    """The training method of a table row: the variant's method, or the name itself."""
    return str(grid.variants[name]["method"]) if name in grid.variants else name


def row_options(grid: Grid, name: str, common: dict) -> dict:
    """Train options of a row: the shared ones, its method's [method.M], then its [variant.NAME]."""
    variant = {k: v for k, v in grid.variants.get(name, {}).items() if k != "method"}
    return {**common, **grid.method_train.get(row_method(grid, name), {}), **variant}


def expand(grid: Grid, init: str | None = None) -> list[Cell]:
    """Every cell of the grid, controls right after the methods they control."""
    cells: list[Cell] = []
    sweep_keys = list(grid.sweep)
    for combo in itertools.product(*(grid.sweep[k] for k in sweep_keys)) if sweep_keys else [()]:
        sweep = dict(zip(sweep_keys, combo))
        base = {**grid.train, **sweep, **({"init": init} if init else {})}
        ce_recipe = recipe_of(resolved({**base, **grid.method_train.get("ce", {})}, "ce"))
        controls: dict[str, tuple[dict, list[str]]] = {}  # recipe json -> (recipe, methods)
        for method in grid.methods:
            if method == "ce" or not grid.controls:
                continue
            r = recipe_of(resolved(row_options(grid, method, base), row_method(grid, method)))
            if r != ce_recipe:
                controls.setdefault(json.dumps(r, sort_keys=True), (r, []))[1].append(method)
        for noise in grid.noise:
            for seed in grid.seeds:
                common = {**base, "seed": seed, **({} if noise == "clean" else {"noise": noise})}
                for method in grid.methods:
                    opts = {**row_options(grid, method, common), "method": row_method(grid, method)}
                    if grid.scale_warmup:
                        warm = scaled_warmup(opts["method"], opts)
                        if warm:
                            opts["method_options"] = {**opts.get("method_options", {}), **warm}
                    cells.append(Cell(cell_name(method, noise, seed, sweep), opts, method, noise, seed, sweep=sweep))
                    for r, of in controls.values():
                        if of[0] == method:  # each control once, after the first method it controls
                            ctl = {**common, **grid.method_train.get("ce", {}), **r, "method": "ce"}
                            ctl["recipe"] = resolved({**common, **grid.method_train.get("ce", {})}, "ce").recipe
                            cells.append(Cell(cell_name("ce", noise, seed, sweep, tuple(of)), ctl, "ce", noise, seed,
                                              control_of=tuple(of), sweep=sweep, role="control"))
                if grid.cleanlab and noise != "clean":
                    k = int(grid.cleanlab["folds"])
                    opts = {**common, **grid.method_train.get("ce", {}),
                            **{a: b for a, b in grid.cleanlab.items() if a != "folds"}, "method": "ce"}
                    for i in range(k):
                        name = cell_name(f"cleanlab-f{i}of{k}", noise, seed, sweep)
                        cells.append(Cell(name, {**opts, "fold": f"{i}/{k}"}, "ce", noise, seed, sweep=sweep, role="crossfit"))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise RobustferError("the grid names two cells alike (a sweep value repeated?): " +
                             ", ".join(sorted({n for n in names if names.count(n) > 1})))
    return cells


def pretrain_config(grid: Grid, out: Path):
    """The pretraining stage as a train run in OUT/pretrain, or with `objective` a label-free `robustfer
    pretrain` run (a PretrainConfig); None when the grid gives a checkpoint or none."""
    if grid.pretrain is None or "checkpoint" in grid.pretrain:
        return None
    if "objective" in grid.pretrain:
        from robustfer.pretrain import PretrainConfig

        names = {f.name for f in fields(PretrainConfig)}
        shared = {k: grid.train[k] for k in ("dataset", "root", "model", "cache_dir", "label_mode", "input_size",
                                             "device", "threads", "norm", "train_split") if k in grid.train and k in names}
        return PretrainConfig(**{**shared, **grid.pretrain, "out": str(out / "pretrain")})
    shared = {k: grid.train[k] for k in ("dataset", "root", "model", "cache_dir", "label_mode", "input_size",
                                         "device", "threads") if k in grid.train}
    return TrainConfig(**{**shared, "method": "ce", **grid.pretrain, "out": str(out / "pretrain")})


def init_of(grid: Grid, out: Path) -> str | None:
    """The checkpoint every cell starts from: the stage's last.pt, the grid's checkpoint, or a shared --init."""
    if grid.pretrain is None:
        return None
    if "checkpoint" in grid.pretrain:
        return str(grid.pretrain["checkpoint"])
    return str(out / "pretrain" / "last.pt")


def train_argv(cfg: TrainConfig) -> list[str]:
    """The `robustfer train` arguments that rebuild `cfg` (options at their defaults are left out); for a
    label-free stage (PretrainConfig) the `robustfer pretrain` ones."""
    if not isinstance(cfg, TrainConfig):
        from robustfer.pretrain.runner import pretrain_argv

        return pretrain_argv(cfg)
    defaults = TrainConfig(dataset="", root="", out="")
    argv = ["train"]
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if f.name == "method_options":
            for k, val in v.items():
                argv += ["--method-opt", f"{k}={json.dumps(val)}"]
            continue
        if f.name not in ("dataset", "root", "out", "method") and v == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [flag, str(v)]
    return argv + ["--auto-resume", "--quiet"]


def command_line(cfg: TrainConfig) -> str:
    return shlex.join(["python", "-m", "robustfer", *train_argv(cfg)])


def with_threads(cfg: TrainConfig, threads: int | None) -> TrainConfig:
    return cfg if threads is None or cfg.threads is not None else replace(cfg, threads=threads)
