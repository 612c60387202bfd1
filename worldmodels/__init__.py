"""Learned forward models (deterministic, conditional VAE with z-dropout, ensembles,
image + vector), offline data sets and their training. See docs/worldmodels.md."""

from worldplan.worldmodels.base import MODEL_KINDS, WorldModel, load_model
from worldplan.worldmodels.contract import DynamicsModel, ModelState, Trajectory
from worldplan.worldmodels.dataset import (
    Dataset,
    DatasetError,
    NormStats,
    load_dataset,
    write_dataset,
)
from worldplan.worldmodels.deterministic import DeterministicModel
from worldplan.worldmodels.ego_motion import EgoMotionImageModel
from worldplan.worldmodels.ensemble import Ensemble
from worldplan.worldmodels.images import ImageModel
from worldplan.worldmodels.stochastic import StochasticModel
from worldplan.worldmodels.training import (
    NonFiniteLossError,
    TrainConfig,
    check_compatible,
    evaluate_horizon_error,
    is_main_process,
    train_model,
    train_stochastic,
)
from worldplan.worldmodels.uncertainty import mc_uncertainty

__all__ = [
    "MODEL_KINDS",
    "Dataset",
    "DatasetError",
    "DeterministicModel",
    "DynamicsModel",
    "EgoMotionImageModel",
    "Ensemble",
    "ImageModel",
    "ModelState",
    "StochasticModel",
    "NonFiniteLossError",
    "NormStats",
    "TrainConfig",
    "Trajectory",
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
