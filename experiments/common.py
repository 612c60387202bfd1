"""Small helpers every experiment uses: seeding, devices, figures."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch (module initialisation draws from the global torch
    generator) and return a fresh numpy generator for the caller's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available on this machine")
    return device


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG (atomically) and close it."""
    import io

    import matplotlib.pyplot as plt

    from worldplan.worldmodels.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
