"""Truck-and-trailer kinematics of Nguyen & Widrow (1990), in numpy and torch.

State ``[x, y, theta0, theta1]``: the hitch point (x, y) in yard units, the cab heading
theta0 and the trailer heading theta1 in radians (heading 0 faces +x, away from the dock
wall at x = 0, so backing with s < 0 moves the truck toward the wall). Action ``[phi]``:
the steering angle in radians. Explicit Euler on the hitch point::

    x      += s cos(theta0) dt
    y      += s sin(theta0) dt
    theta0 += (s / L) tan(phi) dt
    theta1 += (s / d) sin(theta0 - theta1) dt

The last line is the no-slip condition at the trailer axle, which sits at
``(x - d cos(theta1), y - d sin(theta1))``, the trailer rear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TruckParams:
    """Sizes and limits; lengths in yard units, angles in radians, dt in seconds."""

    cab_length: float = 6.0  # L: front axle to hitch
    trailer_length: float = 14.0  # d: hitch to trailer axle
    speed: float = -1.0  # s: constant, negative = backing
    dt: float = 0.5
    max_steer: float = math.radians(70.0)
    jackknife_angle: float = math.radians(90.0)
    yard_x: tuple[float, float] = (0.0, 100.0)
    yard_y: tuple[float, float] = (-50.0, 50.0)
    max_steps: int = 300


def wrap_angle(angle):
    """Angle(s) to [-pi, pi); works on floats, numpy arrays and torch tensors."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def step(state, phi, p: TruckParams):
    """One Euler step, ``[..., 4], [...] -> [..., 4]``, in numpy (the environment, float64)
    or torch (batched and differentiable), whichever ``state`` is."""
    torch_in = isinstance(state, torch.Tensor)
    lib = torch if torch_in else np
    x, y, t0, t1 = state[..., 0], state[..., 1], state[..., 2], state[..., 3]
    phi = phi.clamp(-p.max_steer, p.max_steer) if torch_in else np.clip(phi, -p.max_steer,
                                                                           p.max_steer)
    s, dt = p.speed, p.dt
    columns = [
        x + s * lib.cos(t0) * dt,
        y + s * lib.sin(t0) * dt,
        t0 + (s / p.cab_length) * lib.tan(phi) * dt,
        t1 + (s / p.trailer_length) * lib.sin(t0 - t1) * dt,
    ]
    return torch.stack(columns, dim=-1) if torch_in else np.stack(columns, axis=-1)


def step_np(state: np.ndarray, phi: np.ndarray, p: TruckParams) -> np.ndarray:
    """:func:`step` for numpy arrays."""
    return step(np.asarray(state), np.asarray(phi), p)


def step_torch(state: torch.Tensor, phi: torch.Tensor, p: TruckParams) -> torch.Tensor:
    """:func:`step` for torch tensors ``[B, 4], [B] -> [B, 4]``."""
    return step(state, phi, p)


def trailer_rear(state, p: TruckParams):
    """Trailer-axle point ``[..., 2]`` (numpy or torch)."""
    lib = torch if isinstance(state, torch.Tensor) else np
    x, y, t1 = state[..., 0], state[..., 1], state[..., 3]
    return lib.stack([x - p.trailer_length * lib.cos(t1), y - p.trailer_length * lib.sin(t1)], -1)


def cab_front(state, p: TruckParams):
    """Front-axle point of the cab ``[..., 2]``."""
    lib = torch if isinstance(state, torch.Tensor) else np
    x, y, t0 = state[..., 0], state[..., 1], state[..., 2]
    return lib.stack([x + p.cab_length * lib.cos(t0), y + p.cab_length * lib.sin(t0)], -1)


def hitch_angle(state):
    """Cab-trailer angle theta0 - theta1 wrapped to [-pi, pi)."""
    return wrap_angle(state[..., 2] - state[..., 3])


def pose_from_rear(rear_x, rear_y, theta1, hitch, p: TruckParams) -> np.ndarray:
    """States ``[..., 4]`` from the trailer-rear position, trailer heading and hitch angle."""
    rear_x, rear_y, theta1, hitch = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (rear_x, rear_y, theta1, hitch))
    )
    x = rear_x + p.trailer_length * np.cos(theta1)
    y = rear_y + p.trailer_length * np.sin(theta1)
    return np.stack([x, y, theta1 + hitch, theta1], axis=-1)


def in_yard(state, p: TruckParams):
    """True where hitch, trailer rear and cab front are inside the yard (x > 0 is not
    required here: reaching the wall is a separate, terminal event)."""
    lib = torch if isinstance(state, torch.Tensor) else np
    pts = lib.stack([state[..., :2], trailer_rear(state, p), cab_front(state, p)], -2)
    ok_x = pts[..., 0] <= p.yard_x[1]
    ok_y = (pts[..., 1] >= p.yard_y[0]) & (pts[..., 1] <= p.yard_y[1])
    return (ok_x & ok_y).all(-1)


def rear_x(state, p: TruckParams):
    """x of the trailer rear ``[...]``: all the wall tests need (cheaper than the point)."""
    lib = torch if isinstance(state, torch.Tensor) else np
    return state[..., 0] - p.trailer_length * lib.cos(state[..., 3])


def at_wall(state, p: TruckParams, state_rear_x=None):
    """True where the trailer rear or the hitch has reached the dock wall x = 0.
    ``state_rear_x`` may pass :func:`rear_x` of ``state`` when it is already known."""
    x = rear_x(state, p) if state_rear_x is None else state_rear_x
    return (x <= p.yard_x[0]) | (state[..., 0] <= p.yard_x[0])


def wall_fraction(prev, nxt, p: TruckParams, prev_rear_x=None):
    """Fraction in [0, 1] of the step ``prev -> nxt`` at which the trailer rear meets the
    wall (1 where it does not cross). Used to stop trajectories exactly at the wall.
    ``prev_rear_x`` may pass :func:`rear_x` of ``prev`` when it is already known."""
    lib = torch if isinstance(prev, torch.Tensor) else np
    x0 = rear_x(prev, p) if prev_rear_x is None else prev_rear_x
    x1 = rear_x(nxt, p)
    crossing = (x0 > 0) & (x1 <= 0)
    denom = lib.where(crossing, x0 - x1, lib.ones_like(x0))
    frac = lib.where(crossing, x0 / denom, lib.ones_like(x0))
    return frac.clip(0.0, 1.0) if lib is np else frac.clamp(0.0, 1.0)
