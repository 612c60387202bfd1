"""Egos driven among recorded (non-reactive) traffic, vectorised over episodes.

Episode e follows car ``ego_ids[e]`` of a :class:`Recording` from step ``start[e]``:
the ego takes the car's recorded state there and is then moved by the caller's
actions with the kinematic update; every other car replays its recording. The ego
succeeds on reaching the end of the evaluation segment, and fails on a collision (the
numpy image cost's footprint test), on leaving the road (its centre crosses an edge),
or when the recording or the step budget runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldplan.envs.highway.costs import DEFAULT_COSTS, CostConfig, image_costs_np
from worldplan.envs.highway.kinematics import step_np
from worldplan.envs.highway.recording import Recording
from worldplan.envs.highway.render import DEFAULT_VIEW, View, render_views

RUNNING, SUCCESS, COLLISION, OFFROAD, TIMEOUT = 0, 1, 2, 3, 4
OUTCOMES = ("running", "success", "collision", "offroad", "timeout")


@dataclass
class EgoBatch:
    pos: np.ndarray  # [E, 2]
    heading: np.ndarray  # [E, 2]
    speed: np.ndarray  # [E]
    size: np.ndarray  # [E, 2]
    time: np.ndarray  # [E] recording step

    def state(self) -> np.ndarray:
        """``[E, 4]`` = [x, y, vx, vy]."""
        return np.concatenate([self.pos, self.heading * self.speed[:, None]], 1)


class ReplayBatch:
    """E episodes at once among recorded traffic (see the module docstring)."""

    def __init__(self, recording: Recording, ego_ids: np.ndarray, start: np.ndarray,
                 view: View = DEFAULT_VIEW, costs: CostConfig = DEFAULT_COSTS,
                 max_steps: int = 1000) -> None:
        self.rec, self.view, self.cost_cfg = recording, view, costs
        self.ego_ids = np.asarray(ego_ids, int).reshape(-1)
        start = np.asarray(start, int).reshape(-1)
        if start.shape != self.ego_ids.shape:
            raise ValueError(f"start must have one entry per ego ({len(self.ego_ids)}), "
                             f"got {start.shape}")
        if (self.ego_ids < 0).any() or (self.ego_ids >= recording.cars).any():
            raise ValueError(f"ego_ids must lie in [0, {recording.cars}), got {self.ego_ids}")
        if (start < 0).any() or (start >= recording.steps - 1).any():
            raise ValueError(f"start steps must lie in [0, {recording.steps - 1})")
        if not recording.valid[start, self.ego_ids].all():
            bad = self.ego_ids[~recording.valid[start, self.ego_ids]]
            raise ValueError(f"cars {bad.tolist()} are not on the road at their start step")
        r, e = recording, self.ego_ids
        self.ego = EgoBatch(pos=r.pos[start, e].astype(np.float64).copy(),
                            heading=r.heading[start, e].astype(np.float64).copy(),
                            speed=r.speed[start, e].astype(np.float64).copy(),
                            size=r.size[e].astype(np.float64).copy(), time=start.copy())
        self.start = start.copy()
        self.start_x = self.ego.pos[:, 0].copy()
        self.outcome = np.zeros(len(e), int)
        self.steps = np.zeros(len(e), int)
        self.max_steps = max_steps
        self.last_costs: dict[str, np.ndarray] = {}

    @property
    def size(self) -> int:
        return len(self.ego_ids)

    @property
    def done(self) -> np.ndarray:
        return self.outcome != RUNNING

    def distance(self) -> np.ndarray:
        """Metres travelled along the road since the start ``[E]``."""
        return self.ego.pos[:, 0] - self.start_x

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[E, H, W, C]`` uint8 and states ``[E, 4]`` at the current steps."""
        r, ego = self.rec, self.ego
        out = np.zeros((self.size, self.view.height, self.view.width, self.view.channels), np.uint8)
        t_clip = np.minimum(ego.time, r.steps - 1)
        for t in np.unique(t_clip):
            which = np.flatnonzero(t_clip == t)
            cars = np.flatnonzero(r.valid[t])
            own = np.full(len(which), -1)
            lookup = {c: i for i, c in enumerate(cars)}
            for k, w in enumerate(which):
                own[k] = lookup.get(int(self.ego_ids[w]), -1)
            out[which] = render_views(ego.pos[which], ego.heading[which], ego.size[which],
                                      r.pos[t, cars], r.heading[t, cars], r.size[cars], own,
                                      r.road, self.view)
        return out, ego.state()

    def costs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Numpy image costs ``[E]`` of ``images`` ``[E, H, W, C]`` uint8."""
        return image_costs_np(images, self.ego.state(), self.view, self.cost_cfg,
                              self.ego.size, channels_last=True)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Advance running episodes by one step with ``actions`` ``[E, 2]``; returns the new
        images, states and costs. Finished episodes stay frozen."""
        actions = np.asarray(actions, np.float64).reshape(self.size, 2)
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        run = ~self.done
        ego = self.ego
        pos, head, speed = step_np(ego.pos, ego.heading, ego.speed, actions, ego.size[:, 0],
                                   self.rec.dt)
        ego.pos[run], ego.heading[run], ego.speed[run] = pos[run], head[run], speed[run]
        ego.time[run] += 1
        self.steps[run] += 1
        images, states = self.observe()
        costs = self.costs(images)
        self.last_costs = costs
        road = self.rec.road
        y = ego.pos[:, 1]
        success = ego.pos[:, 0] >= road.segment_end
        collision = costs["collision"] > self.cost_cfg.collision_threshold
        offroad = (y < 0) | (y > road.width)
        timeout = (ego.time >= self.rec.steps - 1) | (self.steps >= self.max_steps)
        new = np.full(self.size, RUNNING)
        new = np.where(timeout, TIMEOUT, new)
        new = np.where(success, SUCCESS, new)
        new = np.where(offroad, OFFROAD, new)
        new = np.where(collision, COLLISION, new)
        self.outcome = np.where(run, new, self.outcome)
        return images, states, costs
