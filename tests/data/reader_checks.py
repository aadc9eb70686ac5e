"""Helpers shared by the reader tests (imported by name: tests/data is on sys.path under pytest)."""
import pytest

from robustfer.errors import RobustferError


def names(data) -> list[str]:
    """The class name of every image, in order."""
    return [data.classes[i] for i in data.labels]


def error(fn, *args, **kw) -> str:
    """The message of the RobustferError that fn(*args, **kw) raises; it must be one line."""
    with pytest.raises(RobustferError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg
