"""Label-free pre-training (`robustfer pretrain`): an objective (mae.py, simsiam.py) trained on the
training images alone; the run folder's last.pt holds the backbone weights `train --init` starts from."""
from __future__ import annotations

from robustfer.errors import RobustferError
from robustfer.pretrain.base import Objective
from robustfer.pretrain.mae import MAE
from robustfer.pretrain.simsiam import SimSiam

OBJECTIVES: dict[str, type[Objective]] = {"mae": MAE, "simsiam": SimSiam}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise RobustferError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def create_objective(name: str, backbone, spec, **opts) -> Objective:
    """Objective `name` around `backbone` (unset options take the objective's defaults)."""
    return objective_class(name)(backbone, spec, **{k: v for k, v in opts.items() if v is not None})


from robustfer.pretrain.runner import PretrainConfig, pretrain  # noqa: E402  (the runner uses the registry)

__all__ = ["OBJECTIVES", "Objective", "PretrainConfig", "create_objective", "objective_class", "pretrain"]
