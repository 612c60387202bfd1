"""Dense traffic driven by IDM (car following) and MOBIL (lane changes), vectorised.

Every car moves by the kinematic update of :mod:`worldplan.envs.highway.kinematics` with the
action ``[a, b]``: ``a`` from the Intelligent Driver Model (Treiber, Hennecke & Helbing
2000), ``b`` from a lane-keeping controller steering toward the centre of the car's
target lane, which MOBIL (Kesting, Treiber & Helbing 2007) changes.

Congestion comes from a bottleneck: past the evaluation segment the desired speed of
every lane is capped by a slow, lane-dependent stop-and-go profile, and the entrance
admits a car whenever the lane has room, so queues and waves travel upstream through
the segment as on I-80. All arrays hold the live cars only; cars are identified by a
unique integer ``ids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from worldplan.envs.highway.kinematics import DT, step_np
from worldplan.envs.highway.road import Road


@dataclass
class TrafficConfig:
    """Traffic parameters (SI units)."""

    road: Road = field(default_factory=Road)
    dt: float = DT
    desired_speed: tuple[float, float] = (12.0, 17.0)  # IDM v0 range, m/s
    headway: tuple[float, float] = (0.7, 1.1)  # IDM T, s
    max_accel: tuple[float, float] = (0.7, 1.3)  # IDM a, m/s^2
    comfort_decel: float = 2.0  # IDM b, m/s^2
    min_gap: float = 1.5  # IDM s0, m
    politeness: tuple[float, float] = (0.0, 0.5)  # MOBIL p
    lc_threshold: float = 0.2  # MOBIL delta a_th, m/s^2
    safe_decel: float = 4.0  # MOBIL b_safe, m/s^2
    lc_interval: tuple[float, float] = (1.0, 4.0)  # s between lane-change decisions
    lc_min_speed: float = 1.5  # m/s, no lane change decided below this speed
    length: tuple[float, float] = (4.3, 5.3)  # m
    width: tuple[float, float] = (1.8, 2.0)  # m
    exit_speed_mean: float = 13.0  # bottleneck speed profile, m/s
    exit_speed_amplitude: float = 11.0  # m/s
    exit_period: tuple[float, float] = (50.0, 90.0)  # s, one per lane
    bottleneck_start: float | None = None  # m; default: the end of the segment
    spawn_gap_jitter: float = 2.0  # m
    spawn_speed_margin: float = 2.0  # a new car enters up to this much faster than its leader, m/s
    inflow: float = 0.42  # demand at the entrance, cars per second per lane (Poisson)
    accel_noise: float = 0.3  # std of the drivers' acceleration noise, m/s^2


def idm_accel(speed: np.ndarray, gap: np.ndarray, lead_speed: np.ndarray, v0: np.ndarray,
              headway: np.ndarray, amax: np.ndarray, bcomf: float, s0: float) -> np.ndarray:
    """IDM acceleration ``[N]`` (m/s^2); ``gap = inf`` means a free road."""
    dv = speed - lead_speed
    s_star = s0 + np.maximum(0.0, speed * headway + speed * dv / (2.0 * np.sqrt(amax * bcomf)))
    gap = np.maximum(gap, 0.1)
    inter = np.where(np.isfinite(gap), (s_star / gap) ** 2, 0.0)
    return amax * (1.0 - (speed / v0) ** 4 - inter)


class Traffic:
    """A population of cars on a :class:`Road`, stepped all at once.

    ``step(controlled, actions)`` lets the caller drive some cars (an ego) with given
    actions; ``visible`` (default all) says which cars the others react to, so a
    non-reactive ego is simply invisible to them.
    """

    FIELDS = ("ids", "pos", "heading", "speed", "length", "width", "lane", "v0", "headway",
              "amax", "politeness", "cooldown", "accel", "steer")

    def __init__(self, config: TrafficConfig | None = None, seed: int | None = None) -> None:
        self.config = config or TrafficConfig()
        self.road = self.config.road
        self.rng = np.random.default_rng(seed)
        n = self.road.n_lanes
        self.exit_period = self.rng.uniform(*self.config.exit_period, size=n)
        self.exit_phase = self.rng.uniform(0, 2 * np.pi, size=n)
        self.time = 0.0
        self.pending = np.zeros(n, int)  # cars waiting to enter, per lane
        self.next_id = 0
        self.ids = np.zeros(0, int)
        self.pos = np.zeros((0, 2))
        self.heading = np.zeros((0, 2))
        self.speed = np.zeros(0)
        self.length = np.zeros(0)
        self.width = np.zeros(0)
        self.lane = np.zeros(0, int)
        self.v0 = np.zeros(0)
        self.headway = np.zeros(0)
        self.amax = np.zeros(0)
        self.politeness = np.zeros(0)
        self.cooldown = np.zeros(0)
        self.accel = np.zeros(0)  # last applied actions [N]
        self.steer = np.zeros(0)

    # -- population -------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    def _append(self, lanes: np.ndarray, x: np.ndarray, speed: np.ndarray) -> None:
        c, k, rng = self.config, len(lanes), self.rng
        new = {
            "ids": np.arange(self.next_id, self.next_id + k),
            "pos": np.stack([x, self.road.lane_centre(lanes)], 1),
            "heading": np.tile([1.0, 0.0], (k, 1)),
            "speed": speed,
            "length": rng.uniform(*c.length, k),
            "width": rng.uniform(*c.width, k),
            "lane": lanes.astype(int),
            "v0": rng.uniform(*c.desired_speed, k),
            "headway": rng.uniform(*c.headway, k),
            "amax": rng.uniform(*c.max_accel, k),
            "politeness": rng.uniform(*c.politeness, k),
            "cooldown": rng.uniform(*c.lc_interval, k),
            "accel": np.zeros(k),
            "steer": np.zeros(k),
        }
        self.next_id += k
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), new[name]]))

    def _keep(self, mask: np.ndarray) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[mask])

    def populate(self, spacing: float = 14.0) -> None:
        """Fill every lane with cars ``spacing`` metres apart (jittered), at congested speed."""
        lanes, xs = [], []
        for lane in range(self.road.n_lanes):
            x = np.arange(self.road.length - 5.0, 0.0, -spacing)
            x = x + self.rng.uniform(-2.0, 2.0, len(x))
            lanes.append(np.full(len(x), lane))
            xs.append(x)
        lanes_a, xs_a = np.concatenate(lanes), np.concatenate(xs)
        self._append(lanes_a, xs_a, self.rng.uniform(3.0, 8.0, len(xs_a)))

    def exit_speed(self) -> np.ndarray:
        """The bottleneck's speed cap per lane at the current time ``[n_lanes]`` (m/s)."""
        c = self.config
        wave = np.sin(2 * np.pi * self.time / self.exit_period + self.exit_phase)
        return np.maximum(c.exit_speed_mean + c.exit_speed_amplitude * wave, 0.5)

    # -- neighbours -------------------------------------------------------------------
    def _sorted_keys(self, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted (lane, x) keys of every lane a visible car occupies: its target lane
        and, while it changes lanes, the lane its centre is still in. Returns the keys
        and, per entry, the car index and the lane."""
        span = 1e4
        idx = np.flatnonzero(visible)
        phys = self.road.lane_of(self.pos[idx, 1])
        moving = phys != self.lane[idx]
        cars = np.concatenate([idx, idx[moving]])
        lanes = np.concatenate([self.lane[idx], phys[moving]])
        keys = lanes * span + (self.pos[cars, 0] + 1e3)
        order = np.argsort(keys, kind="stable")
        return keys[order], cars[order], lanes[order]

    def _neighbours(self, table: tuple[np.ndarray, np.ndarray, np.ndarray], lane: np.ndarray,
                    x: np.ndarray, self_idx: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Leader and follower indices (``-1`` for none) in ``lane`` around position ``x``."""
        keys, cars, lanes = table
        span = 1e4
        q = lane * span + (x + 1e3)
        right = np.searchsorted(keys, q, side="right")
        left = np.searchsorted(keys, q, side="left")
        m = len(keys)
        if m == 0:
            return np.full(len(q), -1), np.full(len(q), -1)
        r, lf = np.minimum(right, m - 1), np.maximum(left - 1, 0)
        lead = np.where((right < m) & (lanes[r] == lane), cars[r], -1)
        foll = np.where((left > 0) & (lanes[lf] == lane), cars[lf], -1)
        if self_idx is not None:
            lead = np.where(lead == self_idx, -1, lead)
            foll = np.where(foll == self_idx, -1, foll)
        return lead, foll

    def _gap(self, rear: np.ndarray, front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bumper-to-bumper gap from car ``rear`` to ``front`` and the front car's speed."""
        ok = (rear >= 0) & (front >= 0)
        r, f = np.maximum(rear, 0), np.maximum(front, 0)
        gap = self.pos[f, 0] - self.pos[r, 0] - 0.5 * (self.length[f] + self.length[r])
        return np.where(ok, gap, np.inf), np.where(ok, self.speed[f], 0.0)

    def _idm(self, car: np.ndarray, lead: np.ndarray) -> np.ndarray:
        c = self.config
        gap, lead_speed = self._gap(car, lead)
        v0 = self.v0[car]
        cap_start = c.bottleneck_start if c.bottleneck_start is not None else self.road.segment_end
        capped = self.pos[car, 0] > cap_start
        v0 = np.where(capped, np.minimum(v0, self.exit_speed()[self.lane[car]]), v0)
        return idm_accel(self.speed[car], gap, lead_speed, v0, self.headway[car],
                         self.amax[car], c.comfort_decel, c.min_gap)

    # -- stepping ---------------------------------------------------------------------
    def driver_actions(self, visible: np.ndarray | None = None) -> np.ndarray:
        """IDM + MOBIL + lane keeping for every car: actions ``[N, 2]`` (a, b); also
        updates target lanes when MOBIL decides a change."""
        c, n = self.config, self.n
        if n == 0:
            return np.zeros((0, 2))
        visible = np.ones(n, bool) if visible is None else visible
        table = self._sorted_keys(visible)
        cars = np.arange(n)
        lead, foll = self._neighbours(table, self.lane, self.pos[:, 0], cars)
        accel = self._idm(cars, lead)
        # while changing lanes, also keep clear of the leader in the lane being left
        phys = self.road.lane_of(self.pos[:, 1])
        moving = np.flatnonzero(phys != self.lane)
        if len(moving):
            lead_old, _ = self._neighbours(table, phys[moving], self.pos[moving, 0], moving)
            accel[moving] = np.minimum(accel[moving], self._idm(moving, lead_old))
        if c.accel_noise > 0:
            accel = accel + c.accel_noise * self.rng.standard_normal(n)

        # MOBIL for cars whose decision timer expired and that are settled in their lane
        self.cooldown -= c.dt
        centre = self.road.lane_centre(self.lane)
        settled = np.abs(self.pos[:, 1] - centre) < 0.3
        # (no lane changes from a standstill: a car turning on the spot swings its corners
        # into the next lane without getting anywhere)
        deciding = np.flatnonzero((self.cooldown <= 0) & settled & visible
                                  & (self.speed > c.lc_min_speed))
        if len(deciding):
            self.cooldown[deciding] = self.rng.uniform(*c.lc_interval, len(deciding))
            best_gain = np.full(len(deciding), c.lc_threshold)
            best_lane = self.lane[deciding].copy()
            a_self = accel[deciding]
            old_foll = foll[deciding]
            # old follower: now (behind me) and after I leave (behind my leader)
            a_o = np.where(old_foll >= 0, self._idm(np.maximum(old_foll, 0), deciding), 0.0)
            a_o_new = np.where(old_foll >= 0,
                               self._idm(np.maximum(old_foll, 0), lead[deciding]), 0.0)
            # one direction per step (alternating), so two cars never merge into the same
            # gap from both sides at once
            side_now = 1 if int(round(self.time / c.dt)) % 2 else -1
            for side in (side_now,):
                target = self.lane[deciding] + side
                valid = (target >= 0) & (target < self.road.n_lanes)
                tgt = np.clip(target, 0, self.road.n_lanes - 1)
                nl, nf = self._neighbours(table, tgt, self.pos[deciding, 0], deciding)
                saved = self.lane[deciding].copy()
                self.lane[deciding] = tgt  # evaluate as if already in the target lane
                a_self_new = self._idm(deciding, nl)
                a_n = np.where(nf >= 0, self._idm(np.maximum(nf, 0), nl), 0.0)
                a_n_new = np.where(nf >= 0, self._idm(np.maximum(nf, 0), deciding), 0.0)
                self.lane[deciding] = saved
                # physical room: no overlap with the new neighbours
                gap_l, _ = self._gap(deciding, nl)
                gap_f, _ = self._gap(nf, deciding)
                room = (np.where(nl >= 0, gap_l, np.inf) > 1.0) & \
                       (np.where(nf >= 0, gap_f, np.inf) > 1.0)
                safe = (a_n_new > -c.safe_decel) & room
                p = self.politeness[deciding]
                gain = a_self_new - a_self + p * ((a_n_new - a_n) + (a_o_new - a_o))
                better = valid & safe & (gain > best_gain)
                best_gain = np.where(better, gain, best_gain)
                best_lane = np.where(better, tgt, best_lane)
            self.lane[deciding] = best_lane

        # lane keeping: steer toward the target lane centre (b is a curvature, 1/m)
        centre = self.road.lane_centre(self.lane)
        theta = np.arctan2(self.heading[:, 1], self.heading[:, 0])
        theta_des = np.clip(0.3 * (centre - self.pos[:, 1]), -0.12, 0.12)
        rate = 2.0 * (theta_des - theta)
        steer = rate / np.maximum(self.speed, 1.0)
        return np.stack([accel, steer], 1)

    def step(self, controlled: np.ndarray | None = None, actions: np.ndarray | None = None,
             visible: np.ndarray | None = None) -> None:
        """Advance by ``dt``. ``controlled`` (indices) take ``actions`` ``[K, 2]`` instead of
        the drivers'; ``visible`` (bool ``[N]``) is which cars the drivers react to."""
        act = self.driver_actions(visible)
        if controlled is not None and len(controlled):
            act[controlled] = actions
        self.accel, self.steer = act[:, 0].copy(), act[:, 1].copy()
        self.pos, self.heading, self.speed = step_np(self.pos, self.heading, self.speed, act,
                                                     self.length, self.config.dt)
        self.time += self.config.dt

    def exit_and_spawn(self, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Remove cars past the end of the road (except ``keep``, a bool mask) and admit new
        cars at the entrance where a lane has room. Returns (removed ids, new ids)."""
        gone = self.pos[:, 0] > self.road.length
        if keep is not None:
            gone &= ~keep
        removed = self.ids[gone]
        if gone.any():
            self._keep(~gone)
        c = self.config
        lanes = np.arange(self.road.n_lanes)
        # the rearmost car of each lane
        rear_x = np.full(self.road.n_lanes, np.inf)
        rear_v = np.full(self.road.n_lanes, 8.0)
        rear_len = np.zeros(self.road.n_lanes)
        if self.n:
            lane_of = self.road.lane_of(self.pos[:, 1])
            for_lane = np.where(lane_of[None, :] == lanes[:, None], self.pos[None, :, 0], np.inf)
            j = np.argmin(for_lane, axis=1)
            has = np.isfinite(for_lane[lanes, j])
            rear_x = np.where(has, self.pos[j, 0], np.inf)
            rear_v = np.where(has, self.speed[j], 8.0)
            rear_len = np.where(has, self.length[j], 0.0)
        speed = np.minimum(rear_v + c.spawn_speed_margin, c.desired_speed[0])
        need = (c.min_gap + speed * c.headway[0] + 0.5 * (rear_len + c.length[1])
                + self.rng.uniform(0, c.spawn_gap_jitter, self.road.n_lanes))
        self.pending += self.rng.poisson(c.inflow * c.dt, self.road.n_lanes)
        ok = (rear_x > need) & (self.pending > 0)
        self.pending -= ok
        new_ids = np.arange(self.next_id, self.next_id + int(ok.sum()))
        if ok.any():
            self._append(lanes[ok], np.zeros(int(ok.sum())), speed[ok])
        return removed, new_ids
