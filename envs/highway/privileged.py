"""Privileged drivers: they see the true replayed traffic around the ego, which no
learned policy does, and so state what the evaluation harness allows at best.

:class:`IDMDriver` drives a :class:`~envs.highway.replay.ReplayBatch` (all egos at once,
numpy): IDM car following on the true gap to the car ahead in the ego's path, optionally
watching the follower (it does not brake harder than it must while a replayed follower
closes in, since that follower will not slow down for it), and either keeps its lane or
copies the recorded driver's lane changes (pure pursuit of the recorded track's lateral
position as a function of the distance along the road).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.replay import ReplayBatch


@dataclass(frozen=True)
class IDMDriver:
    """IDM (Treiber et al. 2000) with the true leader; see the module doc."""

    v0: float = 15.0  # m/s, desired speed (the bottleneck caps the leaders anyway)
    time_gap: float = 0.9  # s
    accel: float = 1.5  # m/s^2
    decel: float = 2.0  # m/s^2, comfortable
    s0: float = 1.5  # m
    copy_lanes: bool = True  # follow the recorded lateral track (its lane changes)
    watch_follower: bool = False
    follower_time: float = 0.6  # s: a follower closer than this at its speed is a threat
    path_margin: float = 0.3  # m added to the half widths for "in the ego's path"

    def __post_init__(self) -> None:
        for name in ("v0", "time_gap", "accel", "decel"):
            if getattr(self, name) <= 0:
                raise ValueError(f"IDMDriver.{name} must be > 0, got {getattr(self, name)}")

    def reference(self, batch: ReplayBatch) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per ego, the recorded track's (x increasing, y) for the lateral reference."""
        out = []
        r = batch.rec
        for car in batch.ego_ids:
            t = np.flatnonzero(r.valid[:, car])
            x = np.maximum.accumulate(r.pos[t, car, 0])
            keep = np.concatenate([[True], np.diff(x) > 1e-6])
            out.append((x[keep], r.pos[t, car, 1][keep]))
        return out

    def act(self, batch: ReplayBatch, ref: list[tuple[np.ndarray, np.ndarray]] | None = None
            ) -> np.ndarray:
        """Actions ``[E, 2]`` for every ego of ``batch`` at its current step."""
        r, ego = batch.rec, batch.ego
        e_n = batch.size
        t = np.minimum(ego.time, r.steps - 1)
        valid = r.valid[t]  # [E, C]
        valid[np.arange(e_n), batch.ego_ids] = False
        rel = r.pos[t] - ego.pos[:, None]  # [E, C, 2]
        h = ego.heading
        fwd = rel[..., 0] * h[:, None, 0] + rel[..., 1] * h[:, None, 1]
        left = -rel[..., 0] * h[:, None, 1] + rel[..., 1] * h[:, None, 0]
        half_w = (ego.size[:, None, 1] + r.size[None, :, 1]) / 2 + self.path_margin
        half_l = (ego.size[:, None, 0] + r.size[None, :, 0]) / 2
        in_path = valid & (np.abs(left) < half_w)
        ahead = in_path & (fwd > 0)
        behind = in_path & (fwd <= 0)
        gap_ahead = np.where(ahead, fwd - half_l, np.inf)
        lead = np.argmin(gap_ahead, 1)
        gap = np.maximum(gap_ahead[np.arange(e_n), lead], 0.1)
        v = ego.speed
        v_lead = np.where(np.isfinite(gap_ahead[np.arange(e_n), lead]),
                          r.speed[t, lead], v)
        acc = self._idm(v, v_lead, gap, self.time_gap, self.s0)
        if self.watch_follower:
            gap_behind = np.where(behind, -fwd - half_l, np.inf)
            foll = np.argmin(gap_behind, 1)
            g_f = gap_behind[np.arange(e_n), foll]
            v_f = np.where(np.isfinite(g_f), r.speed[t, foll], 0.0)
            threat = np.isfinite(g_f) & (g_f < self.follower_time * v_f + 1.0) & (v_f > v)
            # the tightest following that still keeps off the leader
            tight = self._idm(v, v_lead, gap, 0.3, 0.5)
            acc = np.where(threat, np.maximum(acc, np.minimum(tight, self.accel)), acc)
        acc = np.clip(acc, -MAX_ACCEL, self.accel)
        steer = self._steer(batch, ref)
        return np.stack([acc, steer], 1)

    def _idm(self, v, v_lead, gap, time_gap, s0):
        dv = v - v_lead
        brake = v * dv / (2 * np.sqrt(self.accel * self.decel))
        s_star = s0 + np.maximum(0.0, v * time_gap + brake)
        return self.accel * (1 - (v / self.v0) ** 4 - (s_star / gap) ** 2)

    def _steer(self, batch: ReplayBatch, ref) -> np.ndarray:
        """Pure pursuit of the lateral reference (the recorded track, or the lane the
        ego started in) at a look-ahead of max(4 m, 1 s)."""
        ego, road = batch.ego, batch.rec.road
        look = np.maximum(4.0, ego.speed * 1.0)
        x_target = ego.pos[:, 0] + look
        if self.copy_lanes:
            if ref is None:
                ref = self.reference(batch)
            y_target = np.array([np.interp(x, xs, ys) for x, (xs, ys) in zip(x_target, ref,
                                                                              strict=True)])
        else:
            start_y = batch.rec.pos[batch.start, batch.ego_ids, 1]
            y_target = road.lane_centre(road.lane_of(start_y))
        dx, dy = look, y_target - ego.pos[:, 1]
        alpha = np.arctan2(dy, dx) - np.arctan2(ego.heading[:, 1], ego.heading[:, 0])
        curvature = 2 * np.sin(alpha) / np.hypot(dx, dy)
        bmax = 1.0 / ego.size[:, 0]
        return np.clip(curvature, -bmax, bmax)
