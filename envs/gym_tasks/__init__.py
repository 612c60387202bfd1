"""Adapters that give gymnasium's own tasks the suite's TaskModel (envs/interface.py).

One module per task; importing it registers the task in :data:`TASK_MODELS`.
``Pendulum-v1`` and ``MountainCarContinuous-v0`` get their true dynamics in torch;
``InvertedPendulum-v5``, ``Reacher-v5`` and ``HalfCheetah-v5`` get a differentiable cost and
termination computed on observations (their ``step`` raises ``NotImplementedError``: MuJoCo
has no closed form here, learn a model). States are gymnasium's observations, so a learned
model and the true step share them.
"""

from worldplan.envs.gym_tasks.base import (
    TASK_MODELS,
    GymTaskModel,
    make_env,
    make_task_model,
    make_vector_env,
)
from worldplan.envs.gym_tasks.half_cheetah import HalfCheetahTaskModel
from worldplan.envs.gym_tasks.inverted_pendulum import InvertedPendulumTaskModel
from worldplan.envs.gym_tasks.mountain_car import MountainCarTaskModel
from worldplan.envs.gym_tasks.pendulum import PendulumTaskModel
from worldplan.envs.gym_tasks.reacher import ReacherTaskModel

__all__ = ["TASK_MODELS", "GymTaskModel", "HalfCheetahTaskModel", "InvertedPendulumTaskModel",
           "MountainCarTaskModel", "PendulumTaskModel", "ReacherTaskModel", "make_env",
           "make_task_model", "make_vector_env"]
