"""The truck backer-upper's differentiable side: dynamics, docking cost, sensors, starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from worldplan.envs.interface import check_batch
from worldplan.envs.truck.kinematics import (
    TruckParams,
    at_wall,
    hitch_angle,
    pose_from_rear,
    rear_x,
    step_torch,
    trailer_rear,
    wall_fraction,
    wrap_angle,
)

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StartRegion:
    """Box of starting poses: trailer rear (x, y), trailer heading, hitch angle (radians).
    A trailer heading of 0 points the trailer's rear straight at the wall."""

    rear_x: tuple[float, float] = (15.0, 45.0)
    rear_y: tuple[float, float] = (-20.0, 20.0)
    theta1: tuple[float, float] = (-math.pi / 2, math.pi / 2)
    hitch: tuple[float, float] = (-math.pi / 6, math.pi / 6)

    def scaled(self, fraction: float, near: StartRegion | None = None) -> StartRegion:
        """Interpolate from ``near`` (the easiest lesson) to this region by ``fraction``."""
        near = near or StartRegion((4.0, 8.0), (-1.0, 1.0), (-0.1, 0.1), (-0.05, 0.05))
        mix = lambda a, b: tuple(float(u + fraction * (v - u)) for u, v in zip(a, b, strict=True))  # noqa: E731
        return StartRegion(*(mix(getattr(near, f), getattr(self, f)) for f in
                             ("rear_x", "rear_y", "theta1", "hitch")))

    def sample(self, rng: np.random.Generator, n: int, params: TruckParams) -> np.ndarray:
        """``n`` states ``[n, 4]`` (float64) drawn uniformly from the box."""
        u = lambda lim: rng.uniform(lim[0], lim[1], size=n)  # noqa: E731
        return pose_from_rear(u(self.rear_x), u(self.rear_y), u(self.theta1), u(self.hitch), params)


@dataclass(frozen=True)
class DockingCriteria:
    """Docked: trailer rear within ``position`` units of the dock and trailer within
    ``angle_deg`` of perpendicular to the wall, with no jackknife."""

    position: float = 1.0
    angle_deg: float = 10.0


STRICT = DockingCriteria(0.5, 5.0)


class TruckTaskModel:
    """The truck backer-upper: dynamics, costs and a sensor (:mod:`worldplan.envs.interface`).

    State ``[B, 4]`` = hitch (x, y), cab heading, trailer heading; action ``[B, 1]`` =
    steering angle (rad). The cost is Nguyen & Widrow's: what matters is where the
    trailer rear meets the wall, so the running cost only penalises jackknifing and the
    terminal cost is the squared distance of the rear to the dock plus a weighted
    squared heading error (modulo 2 pi).
    """

    state_dim = 4
    action_dim = 1

    def __init__(self, params: TruckParams | None = None, angle_weight: float = 30.0,
                 jackknife_weight: float = 100.0) -> None:
        self.params = params or TruckParams()
        self.angle_weight = angle_weight
        self.jackknife_weight = jackknife_weight
        self.action_low = torch.tensor([-self.params.max_steer])
        self.action_high = torch.tensor([self.params.max_steer])

    # -- dynamics -------------------------------------------------------------------
    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """True kinematics ``[B, 4], [B, 1] -> [B, 4]`` (equal to the env's step)."""
        check_batch("state", state, 4)
        check_batch("action", action, 1)
        return step_torch(state, action[:, 0], self.params)

    def stop_at_wall(self, dynamics: Dynamics) -> Dynamics:
        """Wrap any ``dynamics`` (true or learned) so a trajectory stops exactly where the
        trailer rear meets the wall (linear interpolation within the crossing step) and
        stays there. Differentiable; lets fixed-horizon rollouts score the docking pose."""
        p = self.params

        def stopped(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
            x0 = rear_x(state, p)  # shared by both wall tests: this is the BPTT inner loop
            done = at_wall(state, p, x0).unsqueeze(-1)
            nxt = dynamics(state, action)
            frac = wall_fraction(state, nxt, p, x0).unsqueeze(-1)
            moved = state + frac * (nxt - state)
            return torch.where(done, state, moved)

        stopped.__wrapped__ = dynamics  # lets planners read the model's declared sizes
        return stopped

    # -- costs ----------------------------------------------------------------------
    def jackknife_penalty(self, state: torch.Tensor) -> torch.Tensor:
        """Grows quadratically once the hitch angle passes 80% of the jackknife limit."""
        excess = (hitch_angle(state).abs() - 0.8 * self.params.jackknife_angle).clamp(min=0)
        return self.jackknife_weight * excess**2

    def cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Running cost ``[B]``: the jackknife penalty."""
        return self.jackknife_penalty(state)

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        """``[B]``: |rear - dock|^2 + w * wrap(theta1)^2 + jackknife penalty."""
        rear = trailer_rear(state, self.params)
        heading = torch.atan2(torch.sin(state[:, 3]), torch.cos(state[:, 3]))
        return (rear**2).sum(-1) + self.angle_weight * heading**2 + self.jackknife_penalty(state)

    # -- sensing (for filters) --------------------------------------------------------
    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """Sensors ``[B, 4]``: trailer-rear position and both headings."""
        rear = trailer_rear(state, self.params)
        return torch.cat([rear, state[:, 2:4]], dim=-1)

    @property
    def process_noise(self) -> torch.Tensor:
        return torch.diag(torch.tensor([1e-4, 1e-4, 1e-5, 1e-5]))

    @property
    def measurement_noise(self) -> torch.Tensor:
        return torch.diag(torch.tensor([0.25, 0.25, math.radians(2) ** 2, math.radians(2) ** 2]))

    # -- helpers for policies and evaluation -----------------------------------------------
    def features(self, state: torch.Tensor) -> torch.Tensor:
        """Scale-free policy inputs ``[B, 6]``: rear position / 50, trailer heading and hitch
        angle as cos and sin (continuous across the +-pi wrap)."""
        rear = trailer_rear(state, self.params) / 50.0
        t1, psi = state[:, 3], state[:, 2] - state[:, 3]
        return torch.stack([rear[:, 0], rear[:, 1], torch.cos(t1), torch.sin(t1),
                            torch.cos(psi), torch.sin(psi)], dim=-1)

    def docking_errors(self, state) -> tuple[np.ndarray, np.ndarray]:
        """Final position error (units) and trailer angle error (degrees) per state."""
        state = np.asarray(state.detach().cpu() if isinstance(state, torch.Tensor) else state)
        rear = trailer_rear(state, self.params)
        return np.linalg.norm(rear, axis=-1), np.degrees(np.abs(wrap_angle(state[..., 3])))

    def docked(self, state, jackknifed, criteria: DockingCriteria | None = None) -> np.ndarray:
        criteria = criteria or DockingCriteria()
        pos, ang = self.docking_errors(state)
        return (pos <= criteria.position) & (ang <= criteria.angle_deg) & ~np.asarray(jackknifed)
