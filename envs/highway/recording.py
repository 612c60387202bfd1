"""Recorded traffic: every car's trajectory on a dense ``[T, C]`` grid (time x car id).

``record_traffic`` runs :class:`~envs.highway.traffic.Traffic` and stores, for each
step t, the state of every car present at t and the action it took from that state
(recorded before stepping, so ``(s_t, a_t)`` pairs line up; PPUU's recorder was off by
one here). The evaluation replays these trajectories (the other cars do not react).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from worldplan.checkpoint import atomic_write_bytes
from worldplan.envs.highway.road import Road
from worldplan.envs.highway.traffic import Traffic, TrafficConfig

log = logging.getLogger(__name__)


@dataclass
class Recording:
    """Trajectories of C cars over T steps of ``dt`` seconds.

    pos ``[T, C, 2]`` m, heading ``[T, C, 2]`` unit, speed ``[T, C]`` m/s, action
    ``[T, C, 2]`` (a m/s^2, b 1/m; the one applied at t), valid ``[T, C]`` bool,
    size ``[C, 2]`` (length, width) m. Invalid entries are zero.
    """

    pos: np.ndarray
    heading: np.ndarray
    speed: np.ndarray
    action: np.ndarray
    valid: np.ndarray
    size: np.ndarray
    road: Road
    dt: float

    @property
    def steps(self) -> int:
        return self.valid.shape[0]

    @property
    def cars(self) -> int:
        return self.valid.shape[1]

    def span(self, car: int) -> tuple[int, int]:
        """First and last step (inclusive) at which ``car`` is on the road."""
        t = np.flatnonzero(self.valid[:, car])
        if len(t) == 0:
            raise ValueError(f"car {car} never appears in the recording")
        return int(t[0]), int(t[-1])

    def complete_cars(self) -> np.ndarray:
        """Ids of cars recorded from their entry to their exit (not cut by the start or
        end of the recording), in order of entry."""
        first = np.argmax(self.valid, axis=0)
        last = self.steps - 1 - np.argmax(self.valid[::-1], axis=0)
        seen = self.valid.any(0)
        x0 = self.pos[first, np.arange(self.cars), 0]
        x1 = self.pos[last, np.arange(self.cars), 0]
        ok = seen & (first > 0) & (last < self.steps - 1) & (x0 < 1.0) & \
            (x1 > self.road.length - 3.0)
        return np.flatnonzero(ok)

    def save(self, path: str | Path) -> Path:
        buf = io.BytesIO()
        np.savez_compressed(buf, pos=self.pos, heading=self.heading, speed=self.speed,
                            action=self.action, valid=self.valid, size=self.size, dt=self.dt,
                            road=np.array([self.road.n_lanes, self.road.lane_width,
                                           self.road.before, self.road.segment, self.road.after]))
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recording not found: {path}")
        with np.load(path) as z:
            try:
                r = z["road"]
                return cls(pos=z["pos"], heading=z["heading"], speed=z["speed"],
                           action=z["action"], valid=z["valid"], size=z["size"],
                           road=Road(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4])),
                           dt=float(z["dt"]))
            except KeyError as exc:
                raise ValueError(f"{path} is not a traffic recording (no field {exc})") from None


def record_traffic(steps: int, config: TrafficConfig | None = None, warmup: int = 600,
                   seed: int = 0, progress: bool = True) -> Recording:
    """Simulate ``warmup`` + ``steps`` steps of traffic and record the last ``steps``."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    traffic = Traffic(config, seed=seed)
    traffic.populate()
    for _ in tqdm(range(warmup), desc="traffic warm-up", disable=not progress, leave=False):
        traffic.step()
        traffic.exit_and_spawn()
    first_id = int(traffic.ids.min()) if traffic.n else traffic.next_id
    snaps = []
    for _ in tqdm(range(steps), desc="record traffic", disable=not progress, leave=False):
        ids, pos, head, speed = (traffic.ids.copy(), traffic.pos.copy(), traffic.heading.copy(),
                                 traffic.speed.copy())
        size = np.stack([traffic.length, traffic.width], 1)
        traffic.step()
        snaps.append((ids, pos, head, speed, np.stack([traffic.accel, traffic.steer], 1), size))
        traffic.exit_and_spawn()
    n_cars = traffic.next_id - first_id
    rec = Recording(pos=np.zeros((steps, n_cars, 2)),
                    heading=np.zeros((steps, n_cars, 2)),
                    speed=np.zeros((steps, n_cars)),
                    action=np.zeros((steps, n_cars, 2), np.float32),
                    valid=np.zeros((steps, n_cars), bool),
                    size=np.zeros((n_cars, 2), np.float32), road=traffic.road,
                    dt=traffic.config.dt)
    for t, (ids, pos, head, speed, act, size) in enumerate(snaps):
        col = ids - first_id
        rec.pos[t, col], rec.heading[t, col], rec.speed[t, col] = pos, head, speed
        rec.action[t, col], rec.valid[t, col] = act, True
        rec.size[col] = size
    log.info("recorded %d cars over %d steps (%.0f s)", n_cars, steps, steps * rec.dt)
    return rec
