"""Counterfactual drives: a recorded car re-driven with perturbed actions among the
recorded (non-reactive) traffic, the evaluation's own conditions.

Why: in recorded traffic the cars behind the ego react to it (they brake when it
brakes), so a world model learned from recordings alone predicts that braking costs
nothing behind, while in the evaluation the followers replay their recordings and run
into a braking ego. Our simulator can show what I-80 cannot: the same scene with the
recorded car driving differently and nobody reacting. Each drive starts from the car's
recorded state at a random step and adds Ornstein-Uhlenbeck noise to its recorded
actions, so the ego drifts slowly off its recorded path (ahead, behind, sideways) and
sometimes collides; a drive ends at a collision, on leaving the road, at the end of the
segment, or after ``steps`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from worldplan.envs.highway.costs import DEFAULT_COSTS, CostConfig
from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.recording import Recording
from worldplan.envs.highway.render import DEFAULT_VIEW, View
from worldplan.envs.highway.replay import OUTCOMES, ReplayBatch


@dataclass(frozen=True)
class DriveNoise:
    """Ornstein-Uhlenbeck perturbation of the recorded actions (stationary std, time
    constant in seconds)."""

    accel_std: float = 0.8  # m/s^2
    steer_std: float = 0.004  # 1/m
    tau: float = 2.0  # s

    def __post_init__(self) -> None:
        if self.accel_std < 0 or self.steer_std < 0 or not self.tau > 0:
            raise ValueError(f"noise stds must be >= 0 and tau > 0, got {self}")


def counterfactual_drives(rec: Recording, cars: np.ndarray, per_car: int, steps: int,
                          rng: np.random.Generator, noise: DriveNoise = DriveNoise(),
                          view: View = DEFAULT_VIEW, costs: CostConfig = DEFAULT_COSTS,
                          min_steps: int = 10, progress: bool = True
                          ) -> list[dict[str, np.ndarray]]:
    """``per_car`` perturbed drives of up to ``steps`` steps for every car in ``cars``.

    Each drive is an episode in the data set format (``states [T+1, 4]``, ``actions
    [T, 2]``, ``images [T+1, C, H, W]`` uint8, ``costs [T]``: the cost of the frame each
    action leads to) plus ``car``, ``start`` and ``outcome``; drives shorter than
    ``min_steps`` actions are dropped.
    """
    cars = np.asarray(cars, int).reshape(-1)
    if per_car < 1 or steps < 1:
        raise ValueError(f"per_car and steps must be >= 1, got {per_car}, {steps}")
    egos, starts = [], []
    for c in cars:
        first, last = rec.span(int(c))
        if last - first < min_steps + 2:
            continue
        # start anywhere the car still has ``min_steps`` of recording ahead
        hi = max(first + 1, last - min_steps - 1)
        egos += [int(c)] * per_car
        starts += rng.integers(first, hi, size=per_car).tolist()
    if not egos:
        raise ValueError("no car is on the road long enough for a counterfactual drive")
    egos_a, starts_a = np.array(egos), np.array(starts)
    batch = ReplayBatch(rec, egos_a, starts_a, view, costs, max_steps=steps)
    n = batch.size
    alpha = np.exp(-rec.dt / noise.tau)
    std = np.array([noise.accel_std, noise.steer_std])
    ou = rng.standard_normal((n, 2)) * std
    imgs, states = batch.observe()
    frames, sts, acts, cost = [np.moveaxis(imgs, -1, 1)], [states], [], []
    alive = []  # which drives were running at each step
    for _ in tqdm(range(steps), desc="counterfactual drives", disable=not progress,
                  leave=False):
        if batch.done.all():
            break
        t = np.minimum(batch.ego.time, rec.steps - 1)
        action = rec.action[t, egos_a] + ou
        limit = 1.0 / batch.ego.size[:, 0]
        action[:, 0] = np.clip(action[:, 0], -MAX_ACCEL, MAX_ACCEL)
        action[:, 1] = np.clip(action[:, 1], -limit, limit)
        running = ~batch.done
        imgs, states, c = batch.step(action)
        acts.append(action)
        cost.append(c["total"])
        frames.append(np.moveaxis(imgs, -1, 1))
        sts.append(states)
        alive.append(running)
        ou = alpha * ou + np.sqrt(1.0 - alpha**2) * std * rng.standard_normal((n, 2))
    length = np.sum(np.stack(alive, 0), 0)  # actions taken by each drive
    out = []
    for e in range(n):
        k = int(length[e])
        if k < min_steps:
            continue
        out.append({
            "car": int(egos_a[e]), "start": int(starts_a[e]),
            "outcome": OUTCOMES[int(batch.outcome[e])],
            "states": np.stack([s[e] for s in sts[:k + 1]]).astype(np.float32),
            "images": np.stack([f[e] for f in frames[:k + 1]]),
            "actions": np.stack([a[e] for a in acts[:k]]).astype(np.float32),
            "costs": np.array([c[e] for c in cost[:k]], np.float32)})
    return out


__all__ = ["DriveNoise", "counterfactual_drives"]
