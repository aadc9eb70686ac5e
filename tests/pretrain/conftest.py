import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests are tiny, and two threads on a busy 2-core machine only spin."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
