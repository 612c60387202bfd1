"""Learned forward models (deterministic, conditional VAE with z-dropout, ensembles,
image + vector), offline data sets and their training. See docs/worldmodels.md."""

from worldmodels.base import MODEL_KINDS, WorldModel, load_model
from worldmodels.dataset import Dataset, DatasetError, NormStats, load_dataset, write_dataset
from worldmodels.deterministic import DeterministicModel
from worldmodels.ego_motion import EgoMotionImageModel
from worldmodels.ensemble import Ensemble
from worldmodels.images import ImageModel
from worldmodels.stochastic import StochasticModel
from worldmodels.training import (
    NonFiniteLossError,
    TrainConfig,
    check_compatible,
    evaluate_horizon_error,
    is_main_process,
    train_model,
    train_stochastic,
)
from worldmodels.uncertainty import mc_uncertainty

__all__ = [
    "MODEL_KINDS",
    "Dataset",
    "DatasetError",
    "DeterministicModel",
    "EgoMotionImageModel",
    "Ensemble",
    "ImageModel",
    "StochasticModel",
    "NonFiniteLossError",
    "NormStats",
    "TrainConfig",
    "WorldModel",
    "check_compatible",
    "evaluate_horizon_error",
    "is_main_process",
    "load_dataset",
    "load_model",
    "mc_uncertainty",
    "train_model",
    "train_stochastic",
    "write_dataset",
]
