"""Gymnasium's ``Pendulum-v1``: true dynamics and cost in torch."""

from __future__ import annotations

import torch

from worldplan.envs.gym_tasks.base import GymTaskModel


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
    env_attrs = {"g": "g", "m": "m", "length": "l", "dt": "dt", "max_speed": "max_speed",
                 "max_torque": "max_torque"}
    planning = {"horizon": 30, "hidden": 64}

    def __init__(self, g: float = 10.0, m: float = 1.0, length: float = 1.0,
                 dt: float = 0.05, max_speed: float = 8.0, max_torque: float = 2.0,
                 energy_weight: float = 1.0) -> None:
        self.g, self.m, self.length, self.dt = float(g), float(m), float(length), float(dt)
        self.energy_weight = float(energy_weight)
        self.max_speed, self.max_torque = float(max_speed), float(max_torque)
        self._step_constants: dict[tuple, tuple[torch.Tensor, ...]] = {}
        super().__init__(torch.tensor([-max_torque]), torch.tensor([max_torque]))

    @staticmethod
    def angle(state: torch.Tensor) -> torch.Tensor:
        """``[B, 3] -> [B]`` angle in ``[-pi, pi]`` (0 is upright)."""
        return torch.atan2(state[:, 1], state[:, 0])

    def _constants(self, like: torch.Tensor) -> tuple[torch.Tensor | float, ...]:
        """``(3 g / 2 l, 3 / m l^2, dt)`` for :meth:`step`, as 0-dim tensors of ``like``'s
        dtype when it is float32/64: a Python float in an elementwise op is wrapped and
        cast at every call (about 2 us each, a fifth of ``step`` at a thousand rows); the
        values are the same (the scalar is rounded to the tensor's dtype either way)."""
        values = (3 * self.g / (2 * self.length), 3.0 / (self.m * self.length**2), self.dt)
        # torch.compile bakes Python floats into its kernels (and a cache filled while
        # tracing would trigger a recompilation)
        if like.dtype not in (torch.float32, torch.float64) or torch.compiler.is_compiling():
            return values
        key = (like.dtype, like.device, values)
        cached = self._step_constants.get(key)
        if cached is None:
            cached = tuple(torch.tensor(v, dtype=like.dtype, device=like.device)
                           for v in values)
            self._step_constants = {key: cached}  # parameters rarely change: keep one
        return cached

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[B, 3], [B, 1] -> [B, 3]``; differentiable (except through the clips)."""
        gravity, torque, dt = self._constants(state)
        th, thdot = self.angle(state), state[:, 2]
        u = action[:, 0].clamp(-self.max_torque, self.max_torque)
        acc = torch.sin(th) * gravity + u * torque
        new_thdot = (thdot + acc * dt).clamp(-self.max_speed, self.max_speed)
        new_th = th + new_thdot * dt
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
