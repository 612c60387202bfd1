"""The truck backer-upper of Nguyen & Widrow (1990)."""

from worldplan.envs.registration import register_env
from worldplan.envs.truck.episode import BatchResult, Outcome, simulate
from worldplan.envs.truck.kinematics import (
    TruckParams,
    step_np,
    step_torch,
    trailer_rear,
    wrap_angle,
)
from worldplan.envs.truck.task_model import STRICT, DockingCriteria, StartRegion, TruckTaskModel

register_env("worldplan/TruckBackerUpper-v0", "worldplan.envs.truck.env:TruckBackerUpperEnv")

__all__ = [
    "STRICT", "BatchResult", "DockingCriteria", "Outcome", "StartRegion", "TruckParams",
    "TruckTaskModel", "simulate", "step_np", "step_torch", "trailer_rear", "wrap_angle",
]
