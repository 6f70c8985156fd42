"""Test set-up: Triton kernels run under the interpreter on CPU tensors (must be set before triton is imported),
and the fixtures. What the modules import by name lives in helpers.py."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_hang():
    """A loader (a DALI pipeline above all) that stops must raise, never hang: the test fails after 120 s."""
    import signal

    def fail(*_):
        raise TimeoutError("a loader hung")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
