"""Adapters that give gymnasium's own tasks the suite's TaskModel (envs/interface.py).

``Pendulum-v1`` gets its true dynamics in torch; ``InvertedPendulum-v5``, ``Reacher-v5`` and
``HalfCheetah-v5`` get a differentiable cost and termination computed on observations (their
``step`` raises ``NotImplementedError``: MuJoCo has no closed form here, learn a model).
States are gymnasium's observations, so a learned model and the true step share them.
"""

from worldplan.envs.gym_tasks.models import (
    TASK_MODELS,
    GymTaskModel,
    HalfCheetahTaskModel,
    InvertedPendulumTaskModel,
    PendulumTaskModel,
    ReacherTaskModel,
    make_env,
    make_task_model,
    make_vector_env,
)

__all__ = ["TASK_MODELS", "GymTaskModel", "HalfCheetahTaskModel", "InvertedPendulumTaskModel",
           "PendulumTaskModel", "ReacherTaskModel", "make_env", "make_task_model",
           "make_vector_env"]
