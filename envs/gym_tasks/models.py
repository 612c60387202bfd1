"""TaskModels for gymnasium's ``Pendulum-v1`` and MuJoCo tasks, on batched observations.

Every model's state is the environment's observation ``[B, S]`` (float32). The running
cost is ``cost(s, a) = state_cost(s) + action_cost(a)`` and ``terminal_cost = state_cost``.
For the MuJoCo tasks the reward is computed on the observation *after* the step, so the
planned objective ``sum_{t<T} cost(s_t, a_t) + terminal_cost(s_T)`` equals minus the
reward of the T planned steps plus the constant ``state_cost(s_0)``: the same optimum.
For Pendulum-v1 (reward on the state before the step) ``cost`` is exactly minus gymnasium's
reward and ``terminal_cost`` estimates the tail.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import torch

from worldplan.envs.interface import check_batch

log = logging.getLogger(__name__)

__all__ = ["TASK_MODELS", "GymTaskModel", "HalfCheetahTaskModel", "InvertedPendulumTaskModel",
           "PendulumTaskModel", "ReacherTaskModel", "make_env", "make_task_model",
           "make_vector_env"]


class GymTaskModel:
    """Base of the adapters: dims, bounds, cost split into state and action parts.

    Subclasses set ``env_id``, ``state_dim``, ``action_dim``, ``dt`` and the bounds, and
    implement :meth:`state_cost` and :meth:`action_cost`.
    """

    env_id: str = ""
    state_dim: int = 0
    action_dim: int = 0
    dt: float = 0.0
    has_dynamics: bool = False

    def __init__(self, action_low: torch.Tensor, action_high: torch.Tensor) -> None:
        self.action_low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        self.action_high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        if self.action_low.shape != (self.action_dim,):
            raise ValueError(f"action_low must have shape [{self.action_dim}]")

    # -- TaskModel protocol --------------------------------------------------------------
    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """No closed-form dynamics for a MuJoCo task: learn a world model instead."""
        raise NotImplementedError(f"{self.env_id} has no closed-form step in torch; plan with a "
                                  "learned world model (worldmodels/)")

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

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """The state is the observation: identity ``[B, S] -> [B, S]``."""
        return state

    @property
    def process_noise(self) -> torch.Tensor:
        """Nominal ``[S, S]`` (the simulators are deterministic)."""
        return 1e-4 * torch.eye(self.state_dim)

    @property
    def measurement_noise(self) -> torch.Tensor:
        """Nominal ``[S, S]`` (observations are exact)."""
        return 1e-4 * torch.eye(self.state_dim)

    @property
    def occupancy(self) -> None:
        return None

    def _check(self, state: torch.Tensor, action: torch.Tensor | None = None) -> None:
        check_batch("state", state, self.state_dim)
        if action is not None:
            check_batch("action", action, self.action_dim)
            if action.shape[0] != state.shape[0]:
                raise ValueError(f"state and action batch sizes differ: {state.shape[0]} vs "
                                 f"{action.shape[0]}")


class PendulumTaskModel(GymTaskModel):
    """``Pendulum-v1``: state ``[cos th, sin th, thdot]``, action torque ``[-2, 2]`` (N m).

    ``step`` is gymnasium's update in torch (torque clipped, speed clipped to +-8 rad/s,
    ``dt = 0.05`` s); ``cost`` is minus gymnasium's reward
    ``th^2 + 0.1 thdot^2 + 0.001 u^2`` with ``th`` wrapped to ``[-pi, pi)``.
    ``terminal_cost`` estimates the cost to go beyond the horizon: the state cost plus
    ``energy_weight * (E - E_up)^2``, the squared distance of the pendulum's energy from
    that of resting upright, so that a short horizon neither keeps it spinning nor leaves
    it hanging (both look alike over ~1.5 s).
    """

    env_id = "Pendulum-v1"
    state_dim = 3
    action_dim = 1
    has_dynamics = True

    def __init__(self, g: float = 10.0, m: float = 1.0, length: float = 1.0,
                 dt: float = 0.05, max_speed: float = 8.0, max_torque: float = 2.0,
                 energy_weight: float = 1.0) -> None:
        self.g, self.m, self.length, self.dt = float(g), float(m), float(length), float(dt)
        self.energy_weight = float(energy_weight)
        self.max_speed, self.max_torque = float(max_speed), float(max_torque)
        super().__init__(torch.tensor([-max_torque]), torch.tensor([max_torque]))

    @staticmethod
    def angle(state: torch.Tensor) -> torch.Tensor:
        """``[B, 3] -> [B]`` angle in ``[-pi, pi]`` (0 is upright)."""
        return torch.atan2(state[:, 1], state[:, 0])

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[B, 3], [B, 1] -> [B, 3]``; differentiable (except through the clips)."""
        th, thdot = self.angle(state), state[:, 2]
        u = action[:, 0].clamp(-self.max_torque, self.max_torque)
        acc = 3 * self.g / (2 * self.length) * torch.sin(th) + 3.0 / (self.m * self.length**2) * u
        new_thdot = (thdot + acc * self.dt).clamp(-self.max_speed, self.max_speed)
        new_th = th + new_thdot * self.dt
        return torch.stack([torch.cos(new_th), torch.sin(new_th), new_thdot], dim=-1)

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return self.angle(state) ** 2 + 0.1 * state[:, 2] ** 2

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        u = action[:, 0].clamp(-self.max_torque, self.max_torque)
        return 0.001 * u**2

    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Mechanical energy ``[B]`` (J) of the rod about its pivot (0 at the pivot height)."""
        inertia = self.m * self.length**2 / 3
        return 0.5 * inertia * state[:, 2] ** 2 + 0.5 * self.m * self.g * self.length * state[:, 0]

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        upright = 0.5 * self.m * self.g * self.length
        return self.state_cost(state) + self.energy_weight * (self.energy(state) - upright) ** 2

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """Pendulum's reward is on the state before the step: ``-cost(state, action)``."""
        return -self.cost(state, action)


class InvertedPendulumTaskModel(GymTaskModel):
    """``InvertedPendulum-v5``: state ``[x, th, xdot, thdot]`` (m, rad), force ``[-3, 3]``.

    Reward 1 per step while ``|th| <= 0.2``; the episode terminates otherwise. The
    differentiable surrogate cost is ``(th / 0.2)^2 + 0.5 x^2 + 0.01 xdot^2 + 0.001 thdot^2``
    (0 upright and still, 1 at the termination boundary; the cart terms keep it off the
    rail ends at ``x = +-1``, where the pole is lost), no action cost.
    """

    env_id = "InvertedPendulum-v5"
    state_dim = 4
    action_dim = 1
    dt = 0.04

    def __init__(self, max_angle: float = 0.2) -> None:
        self.max_angle = float(max_angle)
        super().__init__(torch.tensor([-3.0]), torch.tensor([3.0]))

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return (state[:, 1] / self.max_angle) ** 2 + 0.5 * state[:, 0] ** 2 + \
            0.01 * state[:, 2] ** 2 + 0.001 * state[:, 3] ** 2

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return torch.zeros(action.shape[0], dtype=action.dtype, device=action.device)

    def terminated(self, state: torch.Tensor) -> torch.Tensor:
        return ~torch.isfinite(state).all(-1) | (state[:, 1].abs() > self.max_angle)

    def quadratic_cost(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q [S, S], goal [S])`` with ``state_cost(s) = (s - goal)^T Q (s - goal)``: the
        cost is exactly quadratic, so an LQR cost-to-go can extend it past the horizon."""
        q = torch.diag(torch.tensor([0.5, 1.0 / self.max_angle**2, 0.01, 0.001]))
        return q, torch.zeros(self.state_dim)

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """Exact: 1 while alive, 0 on the terminating step."""
        return (~self.terminated(next_state)).to(next_state.dtype)


class ReacherTaskModel(GymTaskModel):
    """``Reacher-v5``: state ``[cos q1, cos q2, sin q1, sin q2, target xy, q1dot, q2dot,
    fingertip - target xy]`` (10), torques ``[-1, 1]^2``. Reward
    ``-w_d |fingertip - target| - w_c |a|^2``; the distance is smoothed near 0 by ``eps``
    so its gradient exists (the target and fingertip share their height, so the 2-D
    distance in the observation is exact)."""

    env_id = "Reacher-v5"
    state_dim = 10
    action_dim = 2
    dt = 0.02

    def __init__(self, reward_dist_weight: float = 1.0, reward_control_weight: float = 1.0,
                 eps: float = 1e-8) -> None:
        self.w_dist, self.w_ctrl, self.eps = float(reward_dist_weight), \
            float(reward_control_weight), float(eps)
        super().__init__(-torch.ones(2), torch.ones(2))

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return self.w_dist * torch.sqrt((state[:, -2:] ** 2).sum(-1) + self.eps)

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return self.w_ctrl * (action**2).sum(-1)


class HalfCheetahTaskModel(GymTaskModel):
    """``HalfCheetah-v5``: state ``qpos[1:] (8), qvel (9)`` = 17, torques ``[-1, 1]^6``.
    Reward ``w_f x_velocity - w_c |a|^2``; gymnasium's ``x_velocity`` is the finite
    difference of the root position over the step, approximated here by the mean of the
    observed root velocity ``qvel[0]`` (index 8) before and after the step (correlation
    0.95 on random actions; 0.92 for the velocity after the step alone). Accordingly
    ``terminal_cost`` is half the state cost, so the planned objective is minus the
    predicted reward up to a constant."""

    env_id = "HalfCheetah-v5"
    state_dim = 17
    action_dim = 6
    dt = 0.05

    def __init__(self, forward_reward_weight: float = 1.0, ctrl_cost_weight: float = 0.1) -> None:
        self.w_fwd, self.w_ctrl = float(forward_reward_weight), float(ctrl_cost_weight)
        super().__init__(-torch.ones(6), torch.ones(6))

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return -self.w_fwd * state[:, 8]

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.state_cost(state)

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """``w_f (v + v') / 2 - w_c |a|^2`` with ``v`` the root velocity (index 8)."""
        return -0.5 * (self.state_cost(state) + self.state_cost(next_state)) - \
            self.action_cost(action)

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return self.w_ctrl * (action**2).sum(-1)


TASK_MODELS: dict[str, type[GymTaskModel]] = {
    cls.env_id: cls for cls in (PendulumTaskModel, InvertedPendulumTaskModel, ReacherTaskModel,
                                HalfCheetahTaskModel)
}

# gymnasium constructor arguments each adapter reads from the environment when given one
_ENV_ATTRS: dict[str, dict[str, str]] = {
    "Pendulum-v1": {"g": "g", "m": "m", "length": "l", "dt": "dt", "max_speed": "max_speed",
                    "max_torque": "max_torque"},
    "Reacher-v5": {"reward_dist_weight": "_reward_dist_weight",
                   "reward_control_weight": "_reward_control_weight"},
    "HalfCheetah-v5": {"forward_reward_weight": "_forward_reward_weight",
                       "ctrl_cost_weight": "_ctrl_cost_weight"},
    "InvertedPendulum-v5": {},
}


def make_task_model(env_id: str, env: gym.Env | None = None, **kwargs: Any) -> GymTaskModel:
    """The adapter of ``env_id``; with ``env`` its reward weights and physics constants are
    read from the environment so that they match a customised ``gym.make``."""
    if env_id not in TASK_MODELS:
        raise ValueError(f"unknown env {env_id!r}; adapters exist for "
                         f"{', '.join(sorted(TASK_MODELS))}")
    if env is not None:
        inner = env.unwrapped
        for arg, attr in _ENV_ATTRS[env_id].items():
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


