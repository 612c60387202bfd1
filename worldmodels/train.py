"""Command-line training of a world model on a data set folder, the same entry point on
one process or under ``torchrun`` (DDP, gloo on CPU)::

    python -m worldplan.worldmodels.train --data DATA --out OUT --model deterministic
    torchrun --nproc_per_node=2 -m worldmodels.train --data DATA --out OUT

Writes ``OUT/checkpoints/{last,best}.pt`` and ``OUT/history.json`` (rank 0), including
``param_sync_max_diff``: the largest difference of any parameter between the ranks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from worldplan.checkpoint import atomic_write_text
from worldplan.worldmodels.base import WorldModel
from worldplan.worldmodels.dataset import load_dataset
from worldplan.worldmodels.deterministic import DeterministicModel
from worldplan.worldmodels.ensemble import Ensemble
from worldplan.worldmodels.images import ImageModel
from worldplan.worldmodels.stochastic import StochasticModel
from worldplan.worldmodels.training import TrainConfig, train_model

MODELS = ("deterministic", "stochastic", "ensemble", "image")


@dataclass
class TrainArgs:
    """What to train: ``model`` is one of deterministic, stochastic, ensemble, image."""

    data: Path
    out: Path
    model: str = "deterministic"
    ncond: int = 1
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.1
    z_dim: int = 4
    beta: float = 0.05
    p_z: float = 0.5
    z_dropout: str = "zero"
    k: int = 5
    seed: int = 0
    resume: bool = False
    progress: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(args: TrainArgs, state_dim: int, action_dim: int,
                image_shape: tuple[int, int, int] | None) -> WorldModel:
    """The model ``args`` asks for (initialised from torch's global RNG)."""
    common = dict(ncond=args.ncond, hidden=args.hidden, layers=args.layers,
                  dropout=args.dropout)
    latent = dict(z_dim=args.z_dim, beta=args.beta, p_z=args.p_z, z_dropout=args.z_dropout)
    if args.model == "deterministic":
        return DeterministicModel(state_dim, action_dim, **common)
    if args.model == "stochastic":
        return StochasticModel(state_dim, action_dim, **common, **latent)
    if args.model == "ensemble":
        return Ensemble(state_dim, action_dim, k=args.k, **common)
    if args.model == "image":
        if image_shape is None:
            raise ValueError(f"--model image needs a data set with images; {args.data} has none")
        return ImageModel(state_dim, action_dim, image_shape, **common)
    raise ValueError(f"unknown model {args.model!r}; use one of {MODELS}")


def run(args: TrainArgs) -> dict:
    """Train as ``args`` says; returns the history (with ``param_sync_max_diff``)."""
    ds = load_dataset(args.data)
    torch.manual_seed(args.seed)
    model = build_model(args, ds.state_dim, ds.action_dim, ds.image_shape)
    config = dataclasses.replace(args.train, seed=args.seed)
    history = train_model(model, ds, config, checkpoint_dir=Path(args.out) / "checkpoints",
                          resume=args.resume, progress=args.progress)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    else:
        diff = 0.0
    history["param_sync_max_diff"] = diff
    history["world_size"] = world
    if rank == 0:
        atomic_write_text(Path(args.out) / "history.json", json.dumps(history, indent=1))
    return history


def main() -> None:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = tyro.cli(TrainArgs)
    try:
        run(args)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
