"""Gymnasium's ``MountainCarContinuous-v0``: true dynamics in torch and an energy-shaped cost.

The reward is sparse (+100 once the car reaches the flag, minus ``0.1 a^2`` every step),
so a planner that sees 30 steps ahead from the valley finds no plan that reaches it. The
car must first swing back and forth to gain energy; the terminal cost says so: it charges
the mechanical energy still missing to reach the flag, so that a short horizon prefers the
plans that pump energy, as the Pendulum's terminal cost does for swinging up.
"""

from __future__ import annotations

import math

import torch

from worldplan.envs.gym_tasks.base import GymTaskModel


class MountainCarTaskModel(GymTaskModel):
    """``MountainCarContinuous-v0``: state ``[position, velocity]``, force ``[-1, 1]``.

    ``step`` is gymnasium's update (force clipped, speed clipped to +-0.07, position to
    [-1.2, 0.6], the car stops at the left wall). The hill's potential is
    ``U(p) = power_g sin(3p) / 3`` with ``power_g = 0.0025`` (the acceleration is
    ``-dU/dp``), the energy ``E = v^2 / 2 + U(p)``. Running cost:
    ``0.1 a^2 + goal_weight (1 - sigmoid((p - 0.45) / 0.005))`` (the action part is minus
    the reward's; the second counts the steps spent short of the flag). Terminal cost: the
    running state cost plus ``energy_weight`` times the missing energy as a fraction of
    the valley's depth, ``relu(U(0.45) - E) / (U(0.45) - U_min)``.
    """

    env_id = "MountainCarContinuous-v0"
    state_dim = 2
    action_dim = 1
    dt = 1.0  # one simulator step
    env_attrs = {"power": "power", "max_speed": "max_speed", "goal_position": "goal_position",
                 "goal_velocity": "goal_velocity"}
    planning = {"horizon": 30, "hidden": 64, "mppi_samples": 200}

    gravity = 0.0025
    min_position, max_position = -1.2, 0.6

    def __init__(self, power: float = 0.0015, max_speed: float = 0.07,
                 goal_position: float = 0.45, goal_velocity: float = 0.0,
                 goal_weight: float = 1.0, energy_weight: float = 100.0) -> None:
        self.power, self.max_speed = float(power), float(max_speed)
        self.goal_position, self.goal_velocity = float(goal_position), float(goal_velocity)
        self.goal_weight, self.energy_weight = float(goal_weight), float(energy_weight)
        super().__init__(torch.tensor([-1.0]), torch.tensor([1.0]))

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[B, 2], [B, 1] -> [B, 2]``; differentiable except through the clips."""
        p, v = state[:, 0], state[:, 1]
        force = action[:, 0].clamp(-1.0, 1.0)
        v = (v + force * self.power - self.gravity * torch.cos(3 * p)).clamp(
            -self.max_speed, self.max_speed)
        p = (p + v).clamp(self.min_position, self.max_position)
        v = torch.where((p <= self.min_position) & (v < 0), torch.zeros_like(v), v)
        return torch.stack([p, v], dim=-1)

    def potential(self, position: torch.Tensor) -> torch.Tensor:
        """``U(p)`` ``[B]``: the acceleration the hill gives is ``-dU/dp``."""
        return self.gravity / 3 * torch.sin(3 * position)

    def missing_energy(self, state: torch.Tensor) -> torch.Tensor:
        """``[B]`` in [0, 1]: energy still needed to reach the flag, over the valley's depth."""
        energy = 0.5 * state[:, 1] ** 2 + self.potential(state[:, 0])
        goal = self.gravity / 3 * math.sin(3 * self.goal_position)
        return torch.relu(goal - energy) / (goal + self.gravity / 3)

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        short = 1 - torch.sigmoid((state[:, 0] - self.goal_position) / 0.005)
        return self.goal_weight * short

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return 0.1 * action[:, 0] ** 2  # on the action given, as gymnasium's reward

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        return self.state_cost(state) + self.energy_weight * self.missing_energy(state)

    def terminated(self, state: torch.Tensor) -> torch.Tensor:
        return (state[:, 0] >= self.goal_position) & (state[:, 1] >= self.goal_velocity)

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """Exact: +100 on reaching the flag, minus ``0.1 a^2``."""
        return 100.0 * self.terminated(next_state).to(next_state.dtype) - \
            self.action_cost(action)
