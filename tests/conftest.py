"""Test-wide settings."""

import os

import torch

# Tests use small tensors: one intra-op thread is fastest and keeps parallel test
# processes from oversubscribing the CPU.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
