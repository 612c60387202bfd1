"""The differentiable twin of ``worldplan/Navigation2D-v0`` (torch, batched).

State ``[x, y, vx, vy]`` (metres, m/s); action ``[vx_cmd, vy_cmd]`` (m/s). The MuJoCo
velocity actuators make each velocity a first-order lag toward the command with rate
``kv / mass``. MuJoCo's ``implicitfast`` integrator treats the actuator damping
implicitly, so each simulation step ``h`` is ``v_{k+1} = (v_k + h kv/m u) / (1 + h kv/m)``,
``p_{k+1} = p_k + h v_{k+1}``; over the ``n = frame_skip`` steps of one control step that
sums exactly to::

    v'  = u + (v - u) c^n,                      c = 1 / (1 + h kv / m)
    p'  = p + n h u + h (v - u) c (1 - c^n) / (1 - c)

(contacts with obstacles are not modelled). Measurement: ranges to the landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldplan.envs.interface import check_batch
from worldplan.envs.maps import OccupancyGrid


@dataclass(frozen=True)
class NavigationParams:
    """Robot and sensing constants (SI units)."""

    radius: float = 0.15  # m, the robot disc
    mass: float = 1.0  # kg
    kv: float = 20.0  # N s/m, velocity actuator gain
    max_speed: float = 1.0  # m/s per axis
    sim_dt: float = 0.01  # s, MuJoCo timestep
    frame_skip: int = 10  # control step = sim_dt * frame_skip
    action_noise: float = 0.05  # m/s, std of the noise added to the commanded velocity
    range_noise: float = 0.1  # m, std of each landmark range
    goal_radius: float = 0.3  # m

    @property
    def dt(self) -> float:
        return self.sim_dt * self.frame_skip


class NavigationTaskModel:
    """TaskModel of the navigation task for one map (landmarks and goal fixed)."""

    state_dim = 4
    action_dim = 2

    def __init__(self, params: NavigationParams, grid: OccupancyGrid, landmarks: np.ndarray,
                 goal: np.ndarray) -> None:
        self.params = params
        self.grid = grid
        self.landmarks = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)  # [K, 2]
        self.goal = torch.as_tensor(np.asarray(goal), dtype=torch.float32)  # [2]
        self.action_low = torch.full((2,), -params.max_speed)
        self.action_high = torch.full((2,), params.max_speed)
        c = 1.0 / (1.0 + params.sim_dt * params.kv / params.mass)
        n = params.frame_skip
        self._a = c**n
        self._b = params.sim_dt * c * (1.0 - c**n) / (1.0 - c)

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[B, 4], [B, 2] -> [B, 4]`` (commands clipped to the actuator range)."""
        check_batch("state", state, 4)
        check_batch("action", action, 2)
        u = action.clamp(-self.params.max_speed, self.params.max_speed)
        p, v = state[:, :2], state[:, 2:]
        new_v = u + (v - u) * self._a
        new_p = p + u * self.params.dt + (v - u) * self._b
        return torch.cat([new_p, new_v], dim=1)

    def cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Distance to the goal (m) plus 0.01 x |action|^2: ``[B]``."""
        check_batch("state", state, 4)
        check_batch("action", action, 2)
        goal = self.goal.to(state)
        return torch.linalg.norm(state[:, :2] - goal, dim=1) + 0.01 * (action**2).sum(1)

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        """10 x distance to the goal: ``[B]``."""
        check_batch("state", state, 4)
        return 10.0 * torch.linalg.norm(state[:, :2] - self.goal.to(state), dim=1)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """Noise-free ranges to the ``K`` landmarks: ``[B, 4] -> [B, K]``."""
        check_batch("state", state, 4)
        lm = self.landmarks.to(state)
        return torch.linalg.norm(state[:, None, :2] - lm[None], dim=2)

    @property
    def process_noise(self) -> torch.Tensor:
        """``[4, 4]``: the action noise (std ``s`` per axis) through one step: ``u`` enters
        ``p'`` with gain ``dt - b`` and ``v'`` with gain ``1 - a``."""
        s = self.params.action_noise
        gp, gv = self.params.dt - self._b, 1.0 - self._a
        cov = torch.zeros(4, 4)
        for i in (0, 1):
            cov[i, i], cov[i + 2, i + 2] = (s * gp) ** 2, (s * gv) ** 2
            cov[i, i + 2] = cov[i + 2, i] = s * s * gp * gv
        return cov

    @property
    def measurement_noise(self) -> torch.Tensor:
        """``[K, K]`` diagonal range variance (m^2)."""
        k = self.landmarks.shape[0]
        return torch.eye(k) * self.params.range_noise**2

    @property
    def occupancy(self) -> OccupancyGrid:
        return self.grid
