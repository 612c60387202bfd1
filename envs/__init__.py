"""Tasks: gymnasium environments, their differentiable TaskModels, and maps.

Importing this package imports every task package in it, each of which registers its
environments with gymnasium (``worldplan/<Name>-v0``, see ``registration.py``)."""

from worldplan.envs.interface import Costs, Dynamics, Map, Sensor, TaskModel, check_batch
from worldplan.envs.registration import ENVIRONMENTS, register_all, register_env

__all__ = ["ENVIRONMENTS", "Costs", "Dynamics", "Map", "Sensor", "TaskModel", "check_batch",
           "register_all", "register_env"]

register_all()  # last: the task packages import from this package
