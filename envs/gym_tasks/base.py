"""The base of the gymnasium task adapters and their registry.

Every model's state is the environment's observation ``[B, S]`` (float32). The running
cost is ``cost(s, a) = state_cost(s) + action_cost(a)`` and ``terminal_cost = state_cost``.
For the MuJoCo tasks the reward is computed on the observation *after* the step, so the
planned objective ``sum_{t<T} cost(s_t, a_t) + terminal_cost(s_T)`` equals minus the
reward of the T planned steps plus the constant ``state_cost(s_0)``: the same optimum.

A task is one module that defines a :class:`GymTaskModel` subclass with its ``env_id``;
defining the class registers it in :data:`TASK_MODELS` (``envs/gym_tasks/__init__.py``
imports every task module).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import gymnasium as gym
import torch

from worldplan.envs.interface import check_batch

log = logging.getLogger(__name__)

# env id -> adapter class, filled by GymTaskModel.__init_subclass__
TASK_MODELS: dict[str, type[GymTaskModel]] = {}


class GymTaskModel:
    """Base of the adapters: dims, bounds, cost split into state and action parts.

    Subclasses set ``env_id``, ``state_dim``, ``action_dim``, ``dt`` and the bounds, and
    implement :meth:`state_cost` and :meth:`action_cost`.
    """

    env_id: ClassVar[str] = ""
    state_dim: ClassVar[int] = 0
    action_dim: ClassVar[int] = 0
    dt: ClassVar[float] = 0.0
    has_dynamics: ClassVar[bool] = False  # set for a subclass that defines ``step``
    # constructor argument -> attribute of the gymnasium environment it is read from, so
    # that the adapter matches a customised ``gym.make`` (see :func:`make_task_model`)
    env_attrs: ClassVar[dict[str, str]] = {}
    # this task's defaults for ``worldplan mujoco`` where a setting is left at 0 / auto:
    # horizon, hidden (model width), <planner>_samples, <planner>_iterations, cem_return,
    # beta (iCEM noise colour), uncertainty_weight, terminal ("state" or "lqr")
    planning: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register every adapter that names its environment (one class, one task)."""
        super().__init_subclass__(**kwargs)
        cls.has_dynamics = callable(getattr(cls, "step", None))
        if cls.env_id:
            if cls.env_id in TASK_MODELS and TASK_MODELS[cls.env_id] is not cls:
                raise ValueError(f"two task models for {cls.env_id}: "
                                 f"{TASK_MODELS[cls.env_id].__name__} and {cls.__name__}")
            TASK_MODELS[cls.env_id] = cls

    def __init__(self, action_low: torch.Tensor, action_high: torch.Tensor) -> None:
        self.action_low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        self.action_high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        if self.action_low.shape != (self.action_dim,):
            raise ValueError(f"action_low must have shape [{self.action_dim}]")

    # -- Costs (envs/interface.py); a task with closed-form dynamics also defines step --
    def cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Running cost ``[B, S], [B, A] -> [B]`` (see the module docstring)."""
        return self.state_cost(state) + self.action_cost(action)

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        """``[B, S] -> [B]``: the state part of the cost on the last predicted state."""
        return self.state_cost(state)

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """Gymnasium's reward of the transition, ``[B]`` (exact up to noted approximations)."""
        return -(self.state_cost(next_state) + self.action_cost(action))

    def terminated(self, state: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: does reaching ``state`` end the episode? (never, by default)."""
        return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)

    def _check(self, state: torch.Tensor, action: torch.Tensor | None = None) -> None:
        check_batch("state", state, self.state_dim)
        if action is not None:
            check_batch("action", action, self.action_dim)
            if action.shape[0] != state.shape[0]:
                raise ValueError(f"state and action batch sizes differ: {state.shape[0]} vs "
                                 f"{action.shape[0]}")


def make_task_model(env_id: str, env: gym.Env | None = None, **kwargs: Any) -> GymTaskModel:
    """The adapter of ``env_id``; with ``env`` its reward weights and physics constants are
    read from the environment so that they match a customised ``gym.make``."""
    if env_id not in TASK_MODELS:
        raise ValueError(f"unknown env {env_id!r}; adapters exist for "
                         f"{', '.join(sorted(TASK_MODELS))}")
    if env is not None:
        inner = env.unwrapped
        for arg, attr in TASK_MODELS[env_id].env_attrs.items():
            if arg not in kwargs and hasattr(inner, attr):
                kwargs[arg] = float(getattr(inner, attr))
    return TASK_MODELS[env_id](**kwargs)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **kwargs)`` with the adapter attached as ``env.unwrapped.task_model``."""
    if env_id not in TASK_MODELS:
        raise ValueError(f"unknown env {env_id!r}; adapters exist for "
                         f"{', '.join(sorted(TASK_MODELS))}")
    env = gym.make(env_id, **kwargs)
    env.unwrapped.task_model = make_task_model(env_id, env)
    return env


def make_vector_env(env_id: str, num_envs: int, asynchronous: bool = False,
                    **kwargs: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` as a gymnasium vector env (sync by default; async
    runs each copy in its own process)."""
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    if env_id not in TASK_MODELS:
        raise ValueError(f"unknown env {env_id!r}; adapters exist for "
                         f"{', '.join(sorted(TASK_MODELS))}")
    fns = [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)]
    return gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)


