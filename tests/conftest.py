import os
from pathlib import Path

import pytest

FERPLUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ferplus"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """One decoded-image cache per test session (the real FERPlus is decoded once, not per test)."""
    old = os.environ.get("ROBUSTFER_CACHE")
    os.environ["ROBUSTFER_CACHE"] = str(tmp_path_factory.mktemp("robustfer-cache"))
    yield
    if old is None:
        os.environ.pop("ROBUSTFER_CACHE", None)
    else:
        os.environ["ROBUSTFER_CACHE"] = old


@pytest.fixture(scope="session")
def ferplus_root() -> Path:
    if not (FERPLUS / "FER2013Train" / "label.csv").is_file():
        pytest.fail(f"the real FERPlus data is expected at {FERPLUS} (../shared/data/ferplus beside the repo)")
    return FERPLUS
