import numpy as np
import pytest


@pytest.fixture
def assert_cache_reused(tmp_path, monkeypatch):
    """check(load, module, decoder, name): load(cache_dir) writes exactly one cache file `name-train-*`
    (no scratch left), and a second load reads it back (a memmap, same pixels) without calling
    module.decoder."""
    def check(load, module, decoder: str, name: str) -> None:
        cache = tmp_path / "cache"
        first = load(cache)
        assert [p.name.split("-")[:2] for p in cache.iterdir()] == [[name, "train"]]
        monkeypatch.setattr(module, decoder, lambda *a, **k: pytest.fail("decoded again"))
        second = load(cache)
        assert isinstance(second.images, np.memmap)
        assert np.array_equal(first.images, second.images)
    return check
