"""Drive a gymnasium environment (single or ``gymnasium.vector``) with any MPC planner."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from worldplan.planners.mpc.base import Planner

log = logging.getLogger(__name__)

__all__ = ["EpisodeResult", "RecedingHorizonController"]


@dataclass
class EpisodeResult:
    """One batch of episodes (``N`` = 1 for a single env, ``num_envs`` for a vector env)."""

    returns: np.ndarray  # [N] summed reward of each episode
    lengths: np.ndarray  # [N] steps until termination/truncation
    plan_ms: list[float] = field(default_factory=list)  # planning time per control step
    frames: list[np.ndarray] = field(default_factory=list)  # rgb frames (single env only)
    transitions: dict[str, np.ndarray] = field(default_factory=dict)  # obs/action/next_obs/...

    @property
    def env_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def mean_plan_ms(self) -> float:
        return float(np.mean(self.plan_ms)) if self.plan_ms else float("nan")


class RecedingHorizonController:
    """Plans with ``planner.act`` on the (batched) observation at every step.

    Args:
        planner: any :class:`~planners.mpc.base.Planner`.
        obs_to_state: maps the observations ``[N, O]`` (numpy) to planner states
            ``[N, S]`` (tensor); default: the observation itself as float32.
        device: device of the planner's states.
        exploration: optional ``(action [N, A] numpy, rng) -> action`` applied after
            planning (e.g. Gaussian noise while collecting data).
    """

    def __init__(self, planner: Planner,
                 obs_to_state: Callable[[np.ndarray], torch.Tensor] | None = None,
                 device: str | torch.device = "cpu",
                 exploration: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None
                 = None) -> None:
        if not isinstance(planner, Planner):
            raise TypeError(f"planner must be a Planner, got {type(planner).__name__}")
        self.planner = planner
        self.device = torch.device(device)
        self.obs_to_state = obs_to_state
        self.exploration = exploration

    def _state(self, obs: np.ndarray) -> torch.Tensor:
        if self.obs_to_state is not None:
            return self.obs_to_state(obs).to(self.device)
        return torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)

    def run(self, env: gym.Env | gym.vector.VectorEnv, seed: int | None = None,
            max_steps: int | None = None, render: bool = False, progress: bool = True,
            record: bool = False, rng: np.random.Generator | None = None) -> EpisodeResult:
        """Run one episode in every sub-environment (until each terminates or truncates).

        ``render`` keeps ``env.render()`` frames (single env made with
        ``render_mode="rgb_array"``); ``record`` keeps the transitions of the live
        episodes as arrays ``obs [M, O]``, ``action [M, A]``, ``next_obs``, ``reward``,
        ``terminated``.
        """
        vector = isinstance(env, gym.vector.VectorEnv)
        n = env.num_envs if vector else 1
        obs, _ = env.reset(seed=seed)
        obs = np.asarray(obs, dtype=np.float32).reshape(n, -1)
        space = env.single_action_space if vector else env.action_space
        low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        if max_steps is None:
            spec = env.spec if not vector else getattr(env, "spec", None)
            max_steps = getattr(spec, "max_episode_steps", None) or 1000
            if vector and getattr(env, "spec", None) is None:
                max_steps = 1000
        self.planner.reset(seed=seed)
        if rng is None:
            rng = np.random.default_rng(seed)
        returns = np.zeros(n)
        lengths = np.zeros(n, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        result = EpisodeResult(returns, lengths)
        log_rows: dict[str, list[np.ndarray]] = {k: [] for k in
                                                 ("obs", "action", "next_obs", "reward",
                                                  "terminated")}
        if render and not vector:
            result.frames.append(env.render())
        bar = tqdm(total=max_steps, desc="mpc episode", disable=not progress, leave=False)
        for _ in range(max_steps):
            state = self._state(obs)
            start = time.perf_counter()
            with torch.no_grad():
                action = self.planner.act(state)
            result.plan_ms.append(1000 * (time.perf_counter() - start))
            action = action.detach().cpu().numpy().astype(np.float32)
            if self.exploration is not None:
                action = self.exploration(action, rng)
            action = np.clip(action, low, high)
            nxt, reward, terminated, truncated, _ = env.step(action if vector else action[0])
            nxt = np.asarray(nxt, dtype=np.float32).reshape(n, -1)
            reward = np.asarray(reward, dtype=np.float64).reshape(n)
            terminated = np.asarray(terminated, dtype=bool).reshape(n)
            truncated = np.asarray(truncated, dtype=bool).reshape(n)
            if record:
                for key, value in (("obs", obs), ("action", action), ("next_obs", nxt),
                                   ("reward", reward), ("terminated", terminated)):
                    log_rows[key].append(value[alive])
            returns[alive] += reward[alive]
            lengths[alive] += 1
            alive &= ~(terminated | truncated)
            if render and not vector:
                result.frames.append(env.render())
            bar.update(1)
            bar.set_postfix(ret=f"{returns.mean():.1f}", ms=f"{result.plan_ms[-1]:.1f}")
            if not alive.any():
                break
            obs = nxt
        bar.close()
        if record:
            result.transitions = {k: np.concatenate(v) if v else np.zeros((0,))
                                  for k, v in log_rows.items()}
        return result
