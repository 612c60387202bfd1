"""Drive a gymnasium environment (single or ``gymnasium.vector``) with any MPC planner."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from worldplan.planners.control_loop import Transition, run_episodes
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
        space = env.single_action_space if vector else env.action_space
        low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        if max_steps is None:
            spec = env.spec if not vector else getattr(env, "spec", None)
            max_steps = getattr(spec, "max_episode_steps", None) or 1000
            if vector and getattr(env, "spec", None) is None:
                max_steps = 1000
        if rng is None:
            rng = np.random.default_rng(seed)
        result = EpisodeResult(np.zeros(n), np.zeros(n, dtype=np.int64))

        def reset() -> np.ndarray:
            obs, _ = env.reset(seed=seed)
            self.planner.reset(seed=seed)
            if render and not vector:
                result.frames.append(env.render())
            return np.asarray(obs, dtype=np.float32).reshape(n, -1)

        def act(obs: np.ndarray) -> np.ndarray:
            state = self._state(obs)
            start = time.perf_counter()
            with torch.no_grad():
                action = self.planner.act(state)
            result.plan_ms.append(1000 * (time.perf_counter() - start))
            action = action.detach().cpu().numpy().astype(np.float32)
            if self.exploration is not None:
                action = self.exploration(action, rng)
            return np.clip(action, low, high)

        def step(action: np.ndarray, _alive: np.ndarray) -> Transition:
            nxt, reward, terminated, truncated, _ = env.step(action if vector else action[0])
            if render and not vector:
                result.frames.append(env.render())
            return Transition(np.asarray(nxt, dtype=np.float32).reshape(n, -1),
                              np.asarray(reward, dtype=np.float64).reshape(n),
                              np.asarray(terminated, dtype=bool).reshape(n),
                              np.asarray(truncated, dtype=bool).reshape(n))

        loop = run_episodes(
            reset, step, act, n, max_steps, progress=progress, desc="mpc episode",
            record=("obs", "action", "next_obs", "reward", "terminated") if record else (),
            postfix=lambda r: {"ret": f"{r.returns.mean():.1f}",
                               "ms": f"{result.plan_ms[-1]:.1f}"})
        result.returns, result.lengths = loop.returns, loop.lengths
        if record:
            result.transitions = {k: loop.live(k) for k in loop.records}
        return result
