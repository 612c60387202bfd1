"""Egos driven among recorded (non-reactive) traffic, vectorised over episodes.

Episode e follows car ``ego_ids[e]`` of a :class:`Recording` from step ``start[e]``:
the ego takes the car's recorded state there and is then moved by the caller's
actions with the kinematic update; every other car replays its recording. The ego
succeeds on reaching the end of the evaluation segment, and fails on a collision (the
numpy image cost's footprint test), on leaving the road (its centre crosses an edge),
or when the recording or the step budget runs out.

Every collision is classified by the car it is with (``hit``: front, rear or side; see
:func:`classify_hits`). With ``ignore_rear=True`` an episode also keeps running through
hits from behind, so that one pass gives both PPUU's outcome (``outcome``, the first
event, and ``event_distance``) and the outcome when rear hits are forgiven
(``outcome_no_rear``): a follower replaying its recording does not slow down for an ego
that drives differently from the recorded one, so part of every rear hit is the
replay's, not the ego's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldplan.envs.highway.costs import DEFAULT_COSTS, CostConfig, image_costs_np
from worldplan.envs.highway.kinematics import step_np
from worldplan.envs.highway.recording import Recording
from worldplan.envs.highway.render import DEFAULT_VIEW, View, render_pairs, view_reach

RUNNING, SUCCESS, COLLISION, OFFROAD, TIMEOUT = 0, 1, 2, 3, 4
OUTCOMES = ("running", "success", "collision", "offroad", "timeout")
NO_HIT, FRONT, REAR, SIDE = 0, 1, 2, 3
HITS = ("none", "front", "rear", "side")
CONTACT_MARGIN = 0.3  # m: rectangles this close count as touching (image test ~0.15 m deep)


def classify_hits(ego_pos: np.ndarray, ego_heading: np.ndarray, ego_size: np.ndarray,
                  car_pos: np.ndarray, car_size: np.ndarray,
                  margin: float = CONTACT_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Which of N cars touch one ego, and from where.

    ego_pos/ego_heading ``[2]``, ego_size ``[2]`` (length, width); car_pos ``[N, 2]``,
    car_size ``[N, 2]``. In the ego's frame a car touches when its centre is within the
    half-sums of the lengths (along) and widths (across) plus ``margin`` (cars on a
    highway are nearly parallel, so boxes aligned with the ego are close enough). Returns
    (touching ``[N]`` bool, kind ``[N]``: FRONT / REAR when the along-overlap is the
    smaller in units of those half-sums, i.e. the cars met end to end, else SIDE).
    """
    rel = np.asarray(car_pos, np.float64) - ego_pos
    fwd = rel @ ego_heading
    left = rel @ np.array([-ego_heading[1], ego_heading[0]])
    half_l = (ego_size[0] + car_size[:, 0]) / 2 + margin
    half_w = (ego_size[1] + car_size[:, 1]) / 2 + margin
    touching = (np.abs(fwd) < half_l) & (np.abs(left) < half_w)
    end_to_end = np.abs(fwd) / half_l >= np.abs(left) / half_w
    kind = np.where(end_to_end, np.where(fwd > 0, FRONT, REAR), SIDE)
    return touching, kind


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
                 max_steps: int = 1000, ignore_rear: bool = False,
                 all_costs: bool = True) -> None:
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
        self.ignore_rear = bool(ignore_rear)
        self.all_costs = bool(all_costs)  # False: only the collision test (faster)
        self.hit = np.zeros(len(e), int)  # kind of the collision that set ``outcome``
        self.outcome_no_rear = np.zeros(len(e), int)
        self.event_distance = np.full(len(e), np.nan)  # at the first event (``outcome``)
        self._rear_hitters: list[set[int]] = [set() for _ in range(len(e))]

    @property
    def size(self) -> int:
        return len(self.ego_ids)

    @property
    def done(self) -> np.ndarray:
        """Episodes that are over (with ``ignore_rear``: over when rear hits are forgiven)."""
        return (self.outcome_no_rear if self.ignore_rear else self.outcome) != RUNNING

    def distance(self) -> np.ndarray:
        """Metres travelled along the road since the start ``[E]``."""
        return self.ego.pos[:, 0] - self.start_x

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[E, H, W, C]`` uint8 and states ``[E, 4]`` at the current steps."""
        r, ego = self.rec, self.ego
        t = np.minimum(ego.time, r.steps - 1)
        # every ego sees the cars valid at its own recording step: (ego, car) pairs for
        # all egos at once, one rendering call
        rel = np.abs(r.pos[t] - ego.pos[:, None]).max(-1)  # [E, cars]
        near = r.valid[t] & (rel < view_reach(self.view))
        near[np.arange(self.size), self.ego_ids] = False
        pe, pc = np.nonzero(near)
        te = t[pe]
        out = render_pairs(ego.pos, ego.heading, ego.size, pe, r.pos[te, pc], r.heading[te, pc],
                           r.size[pc], r.road, self.view)
        return out, ego.state()

    def costs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Numpy image costs ``[E]`` of ``images`` ``[E, H, W, C]`` uint8 (only
        ``collision`` unless ``all_costs``)."""
        if not self.all_costs:
            over = images[..., 1].astype(np.int16) + images[..., 2] - 255
            return {"collision": np.maximum(over.reshape(self.size, -1).max(1), 0) / 255.0}
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
        collision = run & (costs["collision"] > self.cost_cfg.collision_threshold)
        offroad = (y < 0) | (y > road.width)
        timeout = (ego.time >= self.rec.steps - 1) | (self.steps >= self.max_steps)
        kind = np.zeros(self.size, int)
        forgiven = np.zeros(self.size, bool)  # every car touching is one that hit from behind
        for e in np.flatnonzero(collision):
            kind[e], forgiven[e] = self._classify(e)
        first = run & (self.outcome == RUNNING)
        self.outcome = np.where(first, self._decide(success, collision, offroad, timeout),
                                self.outcome)
        new_event = first & (self.outcome != RUNNING)
        self.hit = np.where(new_event & (self.outcome == COLLISION), kind, self.hit)
        self.event_distance = np.where(new_event, self.distance(), self.event_distance)
        if self.ignore_rear:
            self.outcome_no_rear = np.where(
                run, self._decide(success, collision & ~forgiven, offroad, timeout),
                self.outcome_no_rear)
        else:
            self.outcome_no_rear = self.outcome.copy()
        return images, states, costs

    @staticmethod
    def _decide(success, collision, offroad, timeout) -> np.ndarray:
        new = np.where(timeout, TIMEOUT, RUNNING)
        new = np.where(success, SUCCESS, new)
        new = np.where(offroad, OFFROAD, new)
        return np.where(collision, COLLISION, new)

    def _classify(self, e: int) -> tuple[int, bool]:
        """Kind of ego ``e``'s collision (the car with the deepest contact), and whether
        every car it touches has hit it from behind (such cars are remembered)."""
        r, t = self.rec, min(int(self.ego.time[e]), self.rec.steps - 1)
        cars = np.flatnonzero(r.valid[t])
        cars = cars[cars != self.ego_ids[e]]
        touching, kind = classify_hits(self.ego.pos[e], self.ego.heading[e], self.ego.size[e],
                                       r.pos[t, cars], r.size[cars])
        if not touching.any():  # the image test saw contact the box test misses: take
            d = np.linalg.norm(r.pos[t, cars] - self.ego.pos[e], axis=1)  # the nearest car
            touching = d == d.min() if len(d) else touching
        if not touching.any():
            return SIDE, False
        ids, kinds = cars[touching], kind[touching]
        d = np.linalg.norm(r.pos[t, ids] - self.ego.pos[e], axis=1)
        main = int(kinds[np.argmin(d)])
        self._rear_hitters[e].update(int(c) for c in ids[kinds == REAR])
        return main, all(int(c) in self._rear_hitters[e] for c in ids)
