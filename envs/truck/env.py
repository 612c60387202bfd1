"""``worldplan/TruckBackerUpper-v0``: back a truck and trailer up to a loading dock."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from worldplan.envs.truck.episode import Outcome, classify
from worldplan.envs.truck.kinematics import TruckParams, step_np, trailer_rear, wrap_angle
from worldplan.envs.truck.render import render_frame
from worldplan.envs.truck.task_model import StartRegion, TruckTaskModel


class TruckBackerUpperEnv(gym.Env):
    """Observation: the state ``[x, y, theta0, theta1]`` with angles wrapped to [-pi, pi);
    ``info["state"]`` holds the unwrapped true state the TaskModel steps. Action:
    ``[phi]``, the steering angle in radians within +-70 degrees. Reward: minus the
    running cost, and minus the terminal cost when an episode ends."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, params: TruckParams | None = None, start_region: StartRegion | None = None,
                 render_mode: str | None = None) -> None:
        self.params = params or TruckParams()
        self.start_region = start_region or StartRegion()
        self.task_model = TruckTaskModel(self.params)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        p = self.params
        span = p.trailer_length + p.cab_length
        low = np.array([p.yard_x[0] - span, p.yard_y[0] - span, -math.pi, -math.pi], np.float32)
        high = np.array([p.yard_x[1] + span, p.yard_y[1] + span, math.pi, math.pi], np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-p.max_steer, p.max_steer, shape=(1,), dtype=np.float32)
        self._state = np.zeros(4)
        self._trace: list[np.ndarray] = []
        self._steps = 0

    def _obs(self) -> np.ndarray:
        obs = self._state.copy()
        obs[2:] = wrap_angle(obs[2:])
        space = self.observation_space
        return np.clip(obs, space.low, space.high).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "state" in options:
            state = np.asarray(options["state"], dtype=np.float64)
            if state.shape != (4,) or not np.isfinite(state).all():
                raise ValueError(f"options['state'] must be 4 finite numbers, got {state}")
            self._state = state
        else:
            self._state = self.start_region.sample(self.np_random, 1, self.params)[0]
        self._steps = 0
        self._trace = [trailer_rear(self._state, self.params)]
        return self._obs(), {"state": self._state.copy()}

    def step(self, action):
        phi = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0],
                            -self.params.max_steer, self.params.max_steer))
        prev = self._state
        self._state = step_np(prev, np.array(phi), self.params)
        self._steps += 1
        outcome, pose = classify(prev[None], self._state[None], self.params)
        outcome = Outcome(int(outcome[0]))
        self._trace.append(trailer_rear(pose[0], self.params))
        with torch.no_grad():
            s = torch.as_tensor(self._state[None], dtype=torch.float64)
            reward = -float(self.task_model.cost(s, torch.tensor([[phi]], dtype=torch.float64))[0])
        terminated = outcome != Outcome.RUNNING
        truncated = not terminated and self._steps >= self.params.max_steps
        info: dict[str, Any] = {"state": self._state.copy(), "outcome": outcome.name.lower()}
        if terminated or truncated:
            pose_t = torch.as_tensor(pose, dtype=torch.float64)
            reward -= float(self.task_model.terminal_cost(pose_t)[0])
            pos_err, ang_err = self.task_model.docking_errors(pose)
            jack = outcome == Outcome.JACKKNIFE
            info.update(final_state=pose[0], position_error=float(pos_err[0]),
                        angle_error_deg=float(ang_err[0]),
                        docked=bool(outcome == Outcome.WALL and
                                    self.task_model.docked(pose, np.array([jack]))[0]))
        return self._obs(), reward, terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return render_frame(self._state, self.params, np.array(self._trace))
