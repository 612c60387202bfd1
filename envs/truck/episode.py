"""Episode rules shared by the environment and the batched simulator, so both end
episodes the same way: the wall, a jackknife, leaving the yard, or the step limit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from worldplan.envs.truck.kinematics import (
    TruckParams,
    at_wall,
    hitch_angle,
    in_yard,
    step_np,
    wall_fraction,
)
from worldplan.planners.control_loop import Transition, run_episodes


class Outcome(IntEnum):
    RUNNING = 0
    WALL = 1  # reached the wall (docked or not: see TruckTaskModel.docked)
    JACKKNIFE = 2
    OUT_OF_YARD = 3
    TIMEOUT = 4


def classify(prev: np.ndarray, nxt: np.ndarray, p: TruckParams) -> tuple[np.ndarray, np.ndarray]:
    """Outcome after the step ``prev -> nxt`` (``[..., 4]``) and the pose to report: at the
    wall, the pose interpolated to where the trailer rear meets it."""
    outcome = np.full(nxt.shape[:-1], Outcome.RUNNING, dtype=np.int64)
    wall = at_wall(nxt, p)
    jack = np.abs(hitch_angle(nxt)) > p.jackknife_angle
    out = ~in_yard(nxt, p)
    outcome[out] = Outcome.OUT_OF_YARD
    outcome[jack] = Outcome.JACKKNIFE
    outcome[wall & ~jack] = Outcome.WALL
    frac = wall_fraction(prev, nxt, p)[..., None]
    pose = np.where((outcome == Outcome.WALL)[..., None], prev + frac * (nxt - prev), nxt)
    return outcome, pose


@dataclass
class BatchResult:
    """Batched episodes: final poses ``[N, 4]``, outcomes ``[N]``, step counts ``[N]``,
    and the trajectories ``[N, T+1, 4]`` (rows after an episode ends repeat its end)."""

    final: np.ndarray
    outcome: np.ndarray
    steps: np.ndarray
    trajectory: np.ndarray


def simulate(
    starts: np.ndarray,
    controller: Callable[[np.ndarray], np.ndarray],
    p: TruckParams,
    max_steps: int | None = None,
    full_batch: bool = False,
    progress: bool = False,
) -> BatchResult:
    """Run ``controller(states [n, 4]) -> steering [n]`` from every start at once, with the
    environment's float64 kinematics and episode rules. The controller sees only running
    episodes, or with ``full_batch`` every episode (for planners that keep a warm start
    per episode)."""
    max_steps = max_steps or p.max_steps
    state = np.array(starts, dtype=np.float64)
    n = len(state)
    outcome = np.full(n, Outcome.RUNNING, dtype=np.int64)
    final = state.copy()

    def act(states: np.ndarray) -> np.ndarray:
        return np.asarray(controller(states), dtype=np.float64).reshape(-1)

    def step(phi: np.ndarray, active: np.ndarray) -> Transition:
        nxt = step_np(state[active], phi[active], p)
        result, pose = classify(state[active], nxt, p)
        idx = np.flatnonzero(active)
        state[idx] = nxt
        outcome[idx] = result
        final[idx] = pose
        return Transition(state, terminated=outcome != Outcome.RUNNING,
                          info={"pose": final})

    # the controller sees only running episodes unless it keeps a warm start per episode
    loop = run_episodes(lambda: state, step, act, n, max_steps, active_only=not full_batch,
                        record=("pose",), progress=progress, desc="simulate")
    outcome[outcome == Outcome.RUNNING] = Outcome.TIMEOUT
    # [N, T+1, 4], C-ordered (as np.stack makes it: reductions over it sum in that order)
    frames = [np.array(starts, dtype=np.float64), *loop.records["pose"].reshape(-1, n, 4)]
    trajectory = np.stack(frames, axis=1)
    return BatchResult(final, outcome, loop.lengths, trajectory)
