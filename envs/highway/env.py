"""``worldplan/DenseTraffic-v0``: drive through congested highway traffic (PPUU's task).

Observation: ``{"image": [117, 24, C] uint8, "state": [x, y, vx, vy] float32}`` (see
:mod:`worldplan.envs.highway.render` for the image layout). Action: ``[a, b]``, acceleration in
m/s^2 and steering curvature in 1/m (PPUU's kinematic update, :mod:`.kinematics`).
Reward: minus the image cost (proximity + 0.2 lane (+ off-road)).

Modes:
- ``live`` (default): IDM + MOBIL traffic simulated on the fly; the ego is a car that has
  just entered. ``reactive=False`` (default, as in PPUU's evaluation) hides the ego from
  the other drivers; ``reactive=True`` lets them brake for it and avoid it.
- ``replay``: the other cars replay a :class:`~envs.highway.recording.Recording`; pass
  ``recording`` (object or path), and optionally ``ego_id`` / ``start_step`` in the
  constructor or in ``reset(options=...)``.

An episode ends with success at the end of the evaluation segment, or on a collision or
leaving the road (``info["outcome"]``), or is truncated after ``max_steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from worldplan.envs.highway.costs import CostConfig, image_costs_np
from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.recording import Recording
from worldplan.envs.highway.render import View, render_scene, render_views
from worldplan.envs.highway.replay import OUTCOMES, ReplayBatch
from worldplan.envs.highway.task_model import MAX_STEER, HighwayTaskModel
from worldplan.envs.highway.traffic import Traffic, TrafficConfig


class DenseTrafficEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, mode: str = "live", reactive: bool = False, offroad_channel: bool = False,
                 recording: Recording | str | Path | None = None, ego_id: int | None = None,
                 start_step: int | None = None, traffic: TrafficConfig | None = None,
                 warmup: int = 300, max_steps: int = 1000, render_mode: str | None = None) -> None:
        if mode not in ("live", "replay"):
            raise ValueError(f"mode must be 'live' or 'replay', got {mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.mode, self.reactive, self.render_mode = mode, reactive, render_mode
        self.view = View(offroad=offroad_channel)
        self.cost_cfg = CostConfig()
        self.traffic_cfg = traffic or TrafficConfig()
        self.road = self.traffic_cfg.road
        self.warmup, self.max_steps = warmup, max_steps
        if isinstance(recording, (str, Path)):
            recording = Recording.load(recording)
        if mode == "replay" and recording is None:
            raise ValueError("mode='replay' needs a recording (a Recording or a path to one)")
        self.recording = recording
        self.ego_id, self.start_step = ego_id, start_step
        self.task_model = HighwayTaskModel(self.view, self.cost_cfg, dt=self.traffic_cfg.dt)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (self.view.height, self.view.width, self.view.channels),
                                    np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        })
        self.action_space = gym.spaces.Box(np.array([-MAX_ACCEL, -MAX_STEER], np.float32),
                                           np.array([MAX_ACCEL, MAX_STEER], np.float32))
        self._traffic: Traffic | None = None
        self._replay: ReplayBatch | None = None
        self._ego = -1
        self._steps = 0
        self._start_x = 0.0
        self._obs: dict[str, np.ndarray] | None = None

    # -- live traffic ---------------------------------------------------------------
    def _live_index(self) -> int:
        idx = np.flatnonzero(self._traffic.ids == self._ego)
        return int(idx[0])

    def _live_observe(self) -> tuple[np.ndarray, np.ndarray]:
        t, i = self._traffic, self._live_index()
        size = np.stack([t.length, t.width], 1)
        img = render_views(t.pos[i:i + 1], t.heading[i:i + 1], size[i:i + 1], t.pos, t.heading,
                           size, np.array([i]), self.road, self.view)[0]
        state = np.concatenate([t.pos[i], t.heading[i] * t.speed[i]])
        return img, state

    def _ego_size(self) -> np.ndarray:
        if self.mode == "live":
            i = self._live_index()
            return np.array([[self._traffic.length[i], self._traffic.width[i]]])
        return self._replay.ego.size

    # -- gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        self._steps = 0
        if self.mode == "live":
            t = Traffic(self.traffic_cfg, seed=int(self.np_random.integers(2**31)))
            t.populate()
            for _ in range(self.warmup):
                t.step()
                t.exit_and_spawn()
            self._traffic = t
            self._ego = int(t.ids[np.argmin(t.pos[:, 0])])  # the car that entered last
            img, state = self._live_observe()
        else:
            rec = options.get("recording", self.recording)
            if isinstance(rec, (str, Path)):
                rec = Recording.load(rec)
            self.recording = rec
            ego = options.get("ego_id", self.ego_id)
            if ego is None:
                cars = rec.complete_cars()
                if len(cars) == 0:
                    raise ValueError("the recording holds no car that crosses the whole road")
                ego = int(self.np_random.choice(cars))
            start = options.get("start_step", self.start_step)
            if start is None:
                start = rec.span(int(ego))[0]
            self._replay = ReplayBatch(rec, np.array([ego]), np.array([start]), self.view,
                                       self.cost_cfg, self.max_steps)
            self._ego = int(ego)
            imgs, states = self._replay.observe()
            img, state = imgs[0], states[0]
        self._start_x = float(state[0])
        self._obs = {"image": img, "state": state.astype(np.float32)}
        return {k: v.copy() for k, v in self._obs.items()}, {"state": state.copy(),
                                                             "ego_id": self._ego}

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, np.float64).reshape(-1)
        if action.shape != (2,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 2 finite numbers [a, b], got {action}")
        self._steps += 1
        if self.mode == "live":
            t = self._traffic
            i = self._live_index()
            visible = None
            if not self.reactive:
                visible = np.ones(t.n, bool)
                visible[i] = False
            t.step(np.array([i]), action[None], visible)
            keep = t.ids == self._ego
            t.exit_and_spawn(keep=keep)
            img, state = self._live_observe()
            costs = image_costs_np(img[None], state[None], self.view, self.cost_cfg,
                                   self._ego_size(), channels_last=True)
            y = state[1]
            if costs["collision"][0] > self.cost_cfg.collision_threshold:
                outcome = "collision"
            elif y < 0 or y > self.road.width:
                outcome = "offroad"
            elif state[0] >= self.road.segment_end:
                outcome = "success"
            else:
                outcome = "running"
        else:
            imgs, states, costs = self._replay.step(action[None])
            img, state = imgs[0], states[0]
            outcome = OUTCOMES[int(self._replay.outcome[0])]
            if outcome == "timeout":
                outcome = "running"
        terminated = outcome in ("success", "collision", "offroad")
        truncated = bool(not terminated and (
            self._steps >= self.max_steps or outcome == "timeout"
            or (self.mode == "replay" and bool(self._replay.done[0]))))
        self._obs = {"image": img, "state": state.astype(np.float32)}
        info = {"state": state.copy(), "outcome": outcome,
                "distance": float(state[0] - self._start_x),
                **{f"cost_{k}": float(v[0]) for k, v in costs.items()}}
        reward = -float(costs["total"][0])
        return {k: v.copy() for k, v in self._obs.items()}, reward, terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array" or self._obs is None:
            return None
        if self.mode == "live":
            t = self._traffic
            size = np.stack([t.length, t.width], 1)
            return render_scene(t.pos, t.heading, size, self.road, highlight=t.ids == self._ego)
        r, ego = self.recording, self._replay.ego
        time = min(int(ego.time[0]), r.steps - 1)
        cars = np.flatnonzero(r.valid[time] & (np.arange(r.cars) != self._ego))
        pos = np.concatenate([r.pos[time, cars], ego.pos])
        head = np.concatenate([r.heading[time, cars], ego.heading])
        size = np.concatenate([r.size[cars], ego.size])
        hl = np.zeros(len(pos), bool)
        hl[-1] = True
        return render_scene(pos, head, size, self.road, highlight=hl)
