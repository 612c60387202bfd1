"""Per-car episodes from tracked traffic: images, states, actions and per-step costs.

Given every car's (smoothed) positions and headings on the recording's ``[T, C]`` grid,
each selected car becomes one episode seen from its own seat: at each of its steps an
ego-centred image with all other cars drawn where the tracker put them, the state
``[x, y, vx, vy]`` with ``v_t = (p_{t+1} - p_t) / dt``, the action that the kinematic
update needs to go from ``s_t`` to ``s_{t+1}`` (recorded before stepping), and the cost
of the frame that action leads to.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from worldplan.envs.highway.costs import DEFAULT_COSTS, CostConfig, image_costs_np
from worldplan.envs.highway.kinematics import MAX_ACCEL, actions_from_states, states_from_tracks
from worldplan.envs.highway.render import DEFAULT_VIEW, View, render_views
from worldplan.envs.highway.road import Road


def headings_from_velocity(vel: np.ndarray, min_speed: float = 0.2) -> np.ndarray:
    """Unit headings ``[..., 2]`` from velocities; ``+x`` where the car is (nearly) still."""
    speed = np.linalg.norm(vel, axis=-1, keepdims=True)
    fallback = np.zeros_like(vel)
    fallback[..., 0] = 1.0
    return np.where(speed > min_speed, vel / np.maximum(speed, 1e-9), fallback)


def build_episodes(pos: np.ndarray, heading: np.ndarray, valid: np.ndarray, size: np.ndarray,
                   cars: np.ndarray, road: Road, dt: float, view: View = DEFAULT_VIEW,
                   costs: CostConfig = DEFAULT_COSTS, steer_min_speed: float = 0.5,
                   progress: bool = True) -> list[dict[str, np.ndarray]]:
    """One episode per car in ``cars``.

    pos/heading ``[T, C, 2]`` (tracked), valid ``[T, C]``, size ``[C, 2]``. A car on the
    road at steps ``t0..t1`` gives ``T_e = t1 - t0`` states and images (the last position
    only closes the last velocity) and ``T_e - 1`` actions and costs. Each episode holds
    ``states [T_e, 4]``, ``actions [T_e - 1, 2]``, ``images [T_e, C, H, W]`` uint8,
    ``costs [T_e - 1]`` (proximity + 0.2 lane (+ off-road)), ``proximity``, ``lane``,
    ``collision`` ``[T_e - 1]``, ``car`` and ``start`` (the recording step of state 0).
    """
    cars = np.asarray(cars, int)
    spans = []
    for c in cars:
        t = np.flatnonzero(valid[:, c])
        if len(t) < 3 or not np.all(np.diff(t) == 1):
            raise ValueError(f"car {c} needs one unbroken track of at least 3 steps")
        spans.append((int(t[0]), int(t[-1])))
    eps = []
    for c, (t0, t1) in zip(cars, spans, strict=True):
        states = states_from_tracks(pos[t0:t1 + 1, c], dt)  # [T_e, 4]
        eps.append({"car": int(c), "start": t0, "states": states,
                    "images": np.zeros((t1 - t0, view.channels, view.height, view.width), np.uint8),
                    "cost_parts": np.zeros((t1 - t0, 5))})
    first = min(s[0] for s in spans)
    last = max(s[1] for s in spans)
    starts = np.array([s[0] for s in spans])
    ends = np.array([s[1] for s in spans])  # exclusive for frames
    for t in tqdm(range(first, last), desc="render episodes", disable=not progress, leave=False):
        active = np.flatnonzero((starts <= t) & (t < ends))
        if len(active) == 0:
            continue
        others = np.flatnonzero(valid[t])
        index_of = {int(c): i for i, c in enumerate(others)}
        ego_cars = cars[active]
        own = np.array([index_of.get(int(c), -1) for c in ego_cars])
        ego_states = np.stack([eps[k]["states"][t - starts[k]] for k in active])
        imgs = render_views(pos[t, ego_cars], heading[t, ego_cars], size[ego_cars],
                            pos[t, others], heading[t, others], size[others], own, road, view)
        parts = image_costs_np(imgs, ego_states, view, costs, size[ego_cars], channels_last=True)
        stacked = np.stack([parts[k] for k in ("total", "proximity", "lane", "offroad",
                                               "collision")], 1)
        for j, k in enumerate(active):
            eps[k]["images"][t - starts[k]] = np.moveaxis(imgs[j], -1, 0)
            eps[k]["cost_parts"][t - starts[k]] = stacked[j]
    out = []
    for ep in eps:
        parts = ep.pop("cost_parts")
        # below ``steer_min_speed`` the heading of a tracked car is noise, so its steering
        # reads 0; both actions are clipped to the kinematic limits
        acts = actions_from_states(ep["states"], dt, min_speed=steer_min_speed)
        length = float(size[ep["car"], 0])
        acts[:, 0] = np.clip(acts[:, 0], -MAX_ACCEL, MAX_ACCEL)
        acts[:, 1] = np.clip(acts[:, 1], -1.0 / length, 1.0 / length)
        ep["actions"] = acts.astype(np.float32)
        ep["states"] = ep["states"].astype(np.float32)
        # the cost of action t is the cost of the frame it leads to (t + 1)
        ep["costs"] = parts[1:, 0].astype(np.float32)
        ep["proximity"], ep["lane"] = parts[1:, 1], parts[1:, 2]
        ep["collision"] = parts[1:, 4]
        out.append(ep)
    return out
