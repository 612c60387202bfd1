"""Tasks: gymnasium environments, their differentiable TaskModels, and maps."""

from worldplan.envs.interface import Costs, Dynamics, Map, Sensor, TaskModel, check_batch
from worldplan.envs.registration import ENVIRONMENTS, register_all

register_all()

__all__ = ["ENVIRONMENTS", "Costs", "Dynamics", "Map", "Sensor", "TaskModel", "check_batch",
           "register_all"]
