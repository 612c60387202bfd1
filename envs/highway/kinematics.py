"""PPUU's kinematic car update, vectorised over cars (numpy) and batched (torch).

A car is a position ``p`` (m), a unit heading ``d``, a speed ``s`` (m/s) and a size.
The action is ``[a, b]``: acceleration a (m/s^2) and steering b (1/m, a curvature).
One step of ``dt`` seconds, in PPUU's order::

    p' = p + s * d * dt
    d' = normalise(d + n(d) * b * s * dt)     n(d) = (-d_y, d_x), so b > 0 turns left (+y)
    s' = max(s + a * dt, 0)

Clips (PPUU's): ``|a| <= 6.17 m/s^2`` (40 px/s^2 at 24 px per 3.7 m lane) and
``|b| <= 1 / length`` (the car-length rule: no turn tighter than a radius of one car
length). The state vector is ``[x, y, vx, vy]`` with ``v = s * d``, so
``p_{t+1} = p_t + v_t * dt`` holds exactly and actions can be recovered from states.
"""

from __future__ import annotations

import numpy as np
import torch

from worldplan.worldmodels.kinematics import PPUU_MAX_ACCEL, curvature_car_step

DT = 0.1  # s
MAX_ACCEL = PPUU_MAX_ACCEL  # m/s^2


def max_steer(length: np.ndarray | torch.Tensor | float):
    """The car-length rule: the largest ``|b|`` (1/m) for a car of ``length`` metres."""
    return 1.0 / length


def step_np(pos: np.ndarray, heading: np.ndarray, speed: np.ndarray, action: np.ndarray,
            length: np.ndarray, dt: float = DT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One kinematic step for N cars.

    pos ``[N, 2]`` m, heading ``[N, 2]`` unit vectors, speed ``[N]`` m/s, action ``[N, 2]``
    (a, b), length ``[N]`` m. Returns new (pos, heading, speed); inputs are not modified.
    """
    a = np.clip(action[:, 0], -MAX_ACCEL, MAX_ACCEL)
    bmax = max_steer(length)
    b = np.clip(action[:, 1], -bmax, bmax)
    new_pos = pos + (speed * dt)[:, None] * heading
    ortho = np.stack([-heading[:, 1], heading[:, 0]], axis=1)
    turned = heading + ortho * (b * speed * dt)[:, None]
    new_heading = turned / np.linalg.norm(turned, axis=1, keepdims=True)
    new_speed = np.maximum(speed + a * dt, 0.0)
    return new_pos, new_heading, new_speed


def step_state_torch(state: torch.Tensor, action: torch.Tensor, length: torch.Tensor | float = 4.8,
                     dt: float = DT) -> torch.Tensor:
    """The same update on states ``[B, 4]`` = [x, y, vx, vy] with actions ``[B, 2]``
    (differentiable; :func:`worldplan.worldmodels.kinematics.curvature_car_step`, which
    the ego-motion world model also uses)."""
    return curvature_car_step(state, action, length, dt, MAX_ACCEL)


def states_from_tracks(pos: np.ndarray, dt: float = DT) -> np.ndarray:
    """States ``[..., T, 4]`` from positions ``[..., T+1, 2]``: ``v_t = (p_{t+1} - p_t) / dt``,
    the exact inverse of the position update (the last position only closes the last step)."""
    vel = np.diff(pos, axis=-2) / dt
    return np.concatenate([pos[..., :-1, :], vel], axis=-1)


def actions_from_states(states: np.ndarray, dt: float = DT, min_speed: float = 0.05) -> np.ndarray:
    """Invert the update: actions ``[..., T, 2]`` from states ``[..., T+1, 4]``.

    ``a_t = (s_{t+1} - s_t) / dt`` and ``b_t = tan(theta_{t+1} - theta_t) / (s_t * dt)``;
    ``b = 0`` where the car is (nearly) standing, since its heading is then unobserved.
    """
    vel = states[..., 2:4]
    speed = np.linalg.norm(vel, axis=-1)
    theta = np.arctan2(vel[..., 1], vel[..., 0])
    a = np.diff(speed, axis=-1) / dt
    dtheta = np.angle(np.exp(1j * np.diff(theta, axis=-1)))
    s0 = speed[..., :-1]
    moving = (s0 > min_speed) & (speed[..., 1:] > min_speed)
    b = np.where(moving, np.tan(dtheta) / np.maximum(s0, min_speed) / dt, 0.0)
    return np.stack([a, b], axis=-1)
