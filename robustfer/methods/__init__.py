"""Method registry: name -> class. Adding a method = its file + one line here + its tests."""
from __future__ import annotations

from robustfer.errors import RobustferError
from robustfer.methods.base import Batch, Method, State, ViewSpec
from robustfer.methods.ce import CE
from robustfer.methods.dnfer import DNFER
from robustfer.methods.eac import EAC
from robustfer.methods.ldl import LDL
from robustfer.methods.ncctfer import NCCTFER
from robustfer.methods.nla import NLA
from robustfer.methods.pll import PLL
from robustfer.methods.poi import POI
from robustfer.methods.rul import RUL
from robustfer.methods.scn import SCN

METHODS: dict[str, type[Method]] = {
    "ce": CE,
    "dnfer": DNFER,
    "eac": EAC,
    "ldl": LDL,
    "ncctfer": NCCTFER,
    "nla": NLA,
    "pll": PLL,
    "poi": POI,
    "rul": RUL,
    "scn": SCN,
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise RobustferError(f"unknown method {name!r}; `robustfer methods` lists them: {', '.join(METHODS)}")
    return METHODS[name]


def create_method(name: str, dataset: str | None = None, **options) -> Method:
    """Instantiate method `name` with its official options on `dataset` overridden by `options`."""
    cls = method_class(name)
    try:
        return cls(**{**cls.options_for(dataset), **options})
    except TypeError as e:
        raise RobustferError(f"bad option for method {name}: {e}") from None


__all__ = ["METHODS", "Batch", "Method", "State", "ViewSpec", "create_method", "method_class"]
