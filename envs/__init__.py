"""Tasks: gymnasium environments, their differentiable TaskModels, and maps."""

from envs.interface import TaskModel, check_batch
from envs.registration import ENVIRONMENTS, register_all

register_all()

__all__ = ["ENVIRONMENTS", "TaskModel", "check_batch", "register_all"]
