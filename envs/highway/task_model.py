"""The differentiable side of the dense-traffic task.

A :class:`~worldplan.envs.interface.TaskModel` and a
:class:`~worldplan.envs.interface.Sensor` only: traffic has no closed-form dynamics (a
world model learns them), and the cost lives on images, not on vector states:
:meth:`image_cost` is PPUU's proximity + 0.2 x lane (+ off-road) cost on
``[B, C, H, W]`` frames and ``[B, 4]`` states. The measurement model is the camera
tracker: positions with noise.
"""

from __future__ import annotations

import torch

from worldplan.envs.highway.costs import DEFAULT_COSTS, CostConfig, image_costs_torch
from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.render import DEFAULT_VIEW, View
from worldplan.envs.interface import check_batch

MAX_STEER = 1.0 / 4.3  # 1/m: the car-length rule for the shortest car


class HighwayTaskModel:
    """State ``[x, y, vx, vy]`` (m, m/s), action ``[a, b]`` (m/s^2, 1/m)."""

    state_dim = 4
    action_dim = 2

    def __init__(self, view: View = DEFAULT_VIEW, costs: CostConfig = DEFAULT_COSTS,
                 tracker_noise: tuple[float, float] = (0.3, 0.15), dt: float = 0.1) -> None:
        self.view, self.costs, self.dt = view, costs, dt
        self.tracker_noise = tracker_noise
        self.action_low = torch.tensor([-MAX_ACCEL, -MAX_STEER])
        self.action_high = torch.tensor([MAX_ACCEL, MAX_STEER])

    def image_cost(self, images: torch.Tensor, states: torch.Tensor,
                   sizes: torch.Tensor | None = None) -> torch.Tensor:
        """PPUU's cost ``[B]`` of frames ``[B, C, H, W]`` in [0, 1] and states ``[B, 4]``."""
        return image_costs_torch(images, states, self.view, self.costs, sizes)["total"]

    def image_costs(self, images: torch.Tensor, states: torch.Tensor,
                    sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every component (proximity, lane, offroad, collision, total), each ``[B]``."""
        return image_costs_torch(images, states, self.view, self.costs, sizes)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """The tracker measures positions ``[B, 2]``."""
        check_batch("state", state, 4)
        return state[:, :2]

    @property
    def process_noise(self) -> torch.Tensor:
        q = torch.tensor([0.0, 0.0, MAX_ACCEL * self.dt, MAX_ACCEL * self.dt]) ** 2 / 9
        return torch.diag(q)

    @property
    def measurement_noise(self) -> torch.Tensor:
        return torch.diag(torch.tensor(self.tracker_noise) ** 2)
