"""Test-wide settings."""

import os

import pytest
import torch

# Tests use small tensors: one intra-op thread is fastest and keeps parallel test
# processes from oversubscribing the CPU.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for a test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
