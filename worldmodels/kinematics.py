"""A kinematic car: the known part of a world model whose ego moves by a fixed rule.

State ``[x, y, vx, vy]`` (m, m/s), action ``[a, b]``: acceleration a (m/s^2) and
steering b as a curvature (1/m, b > 0 turns left). One step of ``dt`` seconds (PPUU's
update, the order matters)::

    p' = p + v * dt
    d' = normalise(d + n(d) * b * s * dt)     d = v / s, n(d) = (-d_y, d_x)
    s' = max(s + a * dt, 0)

with ``|a| <= max_accel`` and ``|b| <= 1 / length`` (no turn tighter than a radius of one
car length). A task whose cars move this way (the highway) uses the same function, so a
model that predicts its ego with it is exact by construction.
"""

from __future__ import annotations

import torch

PPUU_MAX_ACCEL = 6.17  # m/s^2: PPUU's 40 px/s^2 at 24 px per 3.7 m lane


def curvature_car_step(state: torch.Tensor, action: torch.Tensor,
                       length: torch.Tensor | float = 4.8, dt: float = 0.1,
                       max_accel: float = PPUU_MAX_ACCEL) -> torch.Tensor:
    """Next states ``[B, 4]`` from states ``[B, 4]`` and actions ``[B, 2]``; differentiable
    (the heading is taken from the velocity, +x when standing still)."""
    pos, vel = state[:, :2], state[:, 2:]
    speed = vel.norm(dim=1)
    safe = speed.clamp_min(1e-6)
    heading = torch.where((speed > 1e-6)[:, None], vel / safe[:, None],
                          torch.tensor([1.0, 0.0], dtype=state.dtype, device=state.device))
    a = action[:, 0].clamp(-max_accel, max_accel)
    bmax = 1.0 / torch.as_tensor(length, dtype=state.dtype, device=state.device)
    b = torch.maximum(torch.minimum(action[:, 1], bmax), -bmax)
    new_pos = pos + vel * dt
    ortho = torch.stack([-heading[:, 1], heading[:, 0]], dim=1)
    turned = heading + ortho * (b * speed * dt)[:, None]
    new_heading = turned / turned.norm(dim=1, keepdim=True)
    new_speed = (speed + a * dt).clamp_min(0.0)
    return torch.cat([new_pos, new_heading * new_speed[:, None]], dim=1)
