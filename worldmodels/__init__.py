"""Learned forward models (deterministic, conditional VAE with z-dropout, ensembles,
image + vector), offline data sets and their training. See docs/worldmodels.md."""

from worldmodels.base import MODEL_KINDS, WorldModel, load_model
from worldmodels.dataset import Dataset, DatasetError, NormStats, load_dataset, write_dataset
from worldmodels.deterministic import DeterministicModel
from worldmodels.training import (
    NonFiniteLossError,
    TrainConfig,
    check_compatible,
    evaluate_horizon_error,
    train_model,
)

__all__ = [
    "MODEL_KINDS",
    "Dataset",
    "DatasetError",
    "DeterministicModel",
    "NonFiniteLossError",
    "NormStats",
    "TrainConfig",
    "WorldModel",
    "check_compatible",
    "evaluate_horizon_error",
    "load_dataset",
    "load_model",
    "train_model",
    "write_dataset",
]
