"""Hybrid A* (Dolgov et al. 2008) for car-like kinematics, forward and reverse.

The search runs over continuous states but keeps at most one per lattice cell: positions
binned every ``resolution`` metres, each angle in ``angle_dims`` (the heading, and for a
truck the trailer heading too) binned into ``heading_bins``. From a state every motion
primitive (one row of ``controls``) is integrated with the user's batched kinematic step
``step_fn(states [N, S], controls [N, C]) -> [N, S]`` for ``steps_per_primitive`` steps;
the successors are collision-checked with the user's ``is_free(states [N, S]) -> [N]``
at every intermediate step. Cost: distance driven, times ``reverse_cost`` when backing
(a primitive backs when its displacement points against the heading ``state[2]``), plus
``switch_cost`` at every change of direction and ``steer_cost`` x |control[1]| per metre.
Heuristic: the larger of the Euclidean distance and an optional obstacle-aware one, e.g.
:func:`grid_heuristic` (Dijkstra on the occupancy grid from the goal).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from worldplan.envs.maps import OccupancyGrid
from worldplan.planners.path.grid import NoPathError, distance_field

log = logging.getLogger(__name__)

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
CheckFn = Callable[[np.ndarray], np.ndarray]
HeuristicFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class HybridPath:
    """A hybrid A* result.

    Attributes:
        states: ``[K, S]`` every integration step from start to the goal region.
        controls: ``[K - 1, C]`` the control applied before each state.
        reverse: ``[K - 1]`` bool, the step drove backwards.
        cost: the search cost (metres, with the penalties above).
        length: metres driven.
        expanded: lattice nodes expanded.
    """

    states: np.ndarray
    controls: np.ndarray
    reverse: np.ndarray
    cost: float
    length: float
    expanded: int


def wrap(angle: np.ndarray) -> np.ndarray:
    """Angles to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def grid_heuristic(grid: OccupancyGrid, goal_xy: np.ndarray) -> HeuristicFn:
    """An obstacle-aware heuristic: 8-connected shortest distance (metres) on ``grid`` from
    the goal's cell, minus one cell diagonal so it stays admissible for continuous motion;
    ``inf`` in occupied/unreachable cells."""
    goal_cell = tuple(int(v) for v in grid.world_to_cell(np.asarray(goal_xy, dtype=float)))
    field = distance_field(grid, goal_cell, connectivity=8, corner_cutting=True)
    slack = math.sqrt(2) * grid.resolution
    h, w = grid.shape

    def heuristic(states: np.ndarray) -> np.ndarray:
        cells = grid.world_to_cell(states[:, :2])
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < h) & (cells[:, 1] >= 0) & (cells[:, 1] < w)
        out = np.full(len(states), np.inf)
        out[inside] = np.maximum(field[cells[inside, 0], cells[inside, 1]] - slack, 0.0)
        return out

    return heuristic


def hybrid_astar(
    start: np.ndarray,
    goal: np.ndarray,
    step_fn: StepFn,
    controls: np.ndarray,
    is_free: CheckFn,
    resolution: float = 0.5,
    heading_bins: int = 72,
    angle_dims: tuple[int, ...] = (2,),
    steps_per_primitive: int = 5,
    goal_tolerance: float = 0.5,
    heading_tolerance: float = math.radians(10.0),
    reverse_cost: float = 2.0,
    switch_cost: float = 2.0,
    steer_cost: float = 0.1,
    heuristic: HeuristicFn | None = None,
    heuristic_weight: float = 1.5,
    max_expansions: int = 50_000,
    goal_fn: CheckFn | None = None,
) -> HybridPath:
    """Plan a kinematically feasible path from ``start`` to within ``goal_tolerance``
    metres and ``heading_tolerance`` radians (on every angle in ``angle_dims``) of ``goal``.

    Args:
        start, goal: ``[S]`` states; ``[0:2]`` is the position in metres and
            ``state[angle_dims[0]]`` the heading.
        step_fn: batched kinematic step ``[N, S], [N, C] -> [N, S]``.
        controls: ``[M, C]`` motion primitives (e.g. speed sign x steering angles).
        is_free: batched state validity ``[N, S] -> [N]`` bool.
        heuristic_weight: > 1 trades optimality for speed (weighted A*).
        goal_fn: optional goal test ``[N, S] -> [N]`` bool replacing the tolerance test
            (e.g. the truck: trailer rear at the dock, trailer square to the wall).

    Raises:
        NoPathError: no path within ``max_expansions``.
        ValueError: bad shapes, start/goal in collision, bad options.
    """
    start = np.asarray(start, dtype=float).reshape(-1)
    goal = np.asarray(goal, dtype=float).reshape(-1)
    controls = np.asarray(controls, dtype=float)
    if start.shape != goal.shape or start.size < 3:
        raise ValueError(f"start and goal must be [S] states with S >= 3, got {start.shape}, "
                         f"{goal.shape}")
    if not (np.isfinite(start).all() and np.isfinite(goal).all()):
        raise ValueError("start and goal must be finite")
    if controls.ndim != 2 or len(controls) == 0:
        raise ValueError(f"controls must be [M, C] with M >= 1, got {controls.shape}")
    if resolution <= 0 or heading_bins < 1 or steps_per_primitive < 1:
        raise ValueError("resolution, heading_bins and steps_per_primitive must be positive")
    if any(not 0 <= d < start.size for d in angle_dims) or not angle_dims:
        raise ValueError(f"angle_dims {angle_dims} must index the state (size {start.size})")
    if not bool(np.asarray(is_free(start[None])).reshape(-1)[0]):
        raise ValueError(f"start {start.tolist()} is in collision")
    if not bool(np.asarray(is_free(goal[None])).reshape(-1)[0]):
        raise ValueError(f"goal {goal.tolist()} is in collision")
    dims = list(angle_dims)
    heading = dims[0]
    bin_width = 2 * math.pi / heading_bins
    m = len(controls)

    def keys(states: np.ndarray) -> list[tuple[int, ...]]:
        pos = np.floor(states[:, :2] / resolution).astype(np.int64)
        ang = np.floor(wrap(states[:, dims]) / bin_width).astype(np.int64) % heading_bins
        return [tuple(row) for row in np.concatenate([pos, ang], axis=1).tolist()]

    def h_of(states: np.ndarray) -> np.ndarray:
        h = np.linalg.norm(states[:, :2] - goal[:2], axis=1)
        if heuristic is not None:
            h = np.maximum(h, heuristic(states))
        return heuristic_weight * h

    def at_goal(states: np.ndarray) -> np.ndarray:
        if goal_fn is not None:
            return np.asarray(goal_fn(states), dtype=bool).reshape(-1)
        near = np.linalg.norm(states[:, :2] - goal[:2], axis=1) <= goal_tolerance
        ang = np.abs(wrap(states[:, dims] - goal[dims])).max(axis=1) <= heading_tolerance
        return near & ang

    # Node storage: state, parent, control, direction (+1/-1/0), cost, segment states.
    node_state = [start]
    node_parent = [-1]
    node_control = [np.zeros(controls.shape[1])]
    node_dir = [0]
    node_cost = [0.0]
    node_segment: list[np.ndarray] = [start[None]]
    best: dict[tuple[int, ...], int] = {keys(start[None])[0]: 0}
    closed: set[tuple[int, ...]] = set()
    open_heap = [(float(h_of(start[None])[0]), 0.0, 0)]
    expanded = 0
    goal_node = -1
    if at_goal(start[None])[0]:
        goal_node = 0
    while open_heap and goal_node < 0:
        _, g_u, u = heapq.heappop(open_heap)
        key_u = keys(node_state[u][None])[0]
        if key_u in closed or best.get(key_u) != u:
            continue
        closed.add(key_u)
        expanded += 1
        if expanded > max_expansions:
            break
        # Integrate every primitive from u: [steps, M, S].
        states = np.repeat(node_state[u][None], m, axis=0)
        traj = []
        for _ in range(steps_per_primitive):
            states = np.asarray(step_fn(states, controls), dtype=float)
            traj.append(states)
        traj_arr = np.stack(traj)  # [steps, M, S]
        flat = traj_arr.reshape(-1, start.size)
        ok = np.asarray(is_free(flat), dtype=bool).reshape(steps_per_primitive, m).all(axis=0)
        ok &= np.isfinite(flat).reshape(steps_per_primitive, m, -1).all(axis=(0, 2))
        if not ok.any():
            continue
        full = np.concatenate([node_state[u][None, None].repeat(m, 1), traj_arr], axis=0)
        disp = np.diff(full[:, :, :2], axis=0)  # [steps, M, 2]
        dist = np.linalg.norm(disp, axis=2).sum(axis=0)  # [M]
        hd = full[:-1, :, heading]
        along = (disp[..., 0] * np.cos(hd) + disp[..., 1] * np.sin(hd)).sum(axis=0)
        direction = np.where(along < 0, -1, 1)
        step_cost = dist * np.where(direction < 0, reverse_cost, 1.0)
        if controls.shape[1] > 1:
            step_cost = step_cost + steer_cost * np.abs(controls[:, 1]) * dist
        if node_dir[u] != 0:
            step_cost = step_cost + switch_cost * (direction != node_dir[u])
        ends = traj_arr[-1]
        goal_hit = at_goal(flat).reshape(steps_per_primitive, m)
        end_keys = keys(ends)
        h_end = h_of(ends)
        for j in np.flatnonzero(ok):
            new_cost = g_u + float(step_cost[j])
            if goal_hit[:, j].any():
                first = int(np.argmax(goal_hit[:, j]))
                seg = traj_arr[: first + 1, j]
                node_state.append(seg[-1])
                node_parent.append(u)
                node_control.append(controls[j])
                node_dir.append(int(direction[j]))
                node_cost.append(new_cost)
                node_segment.append(seg)
                goal_node = len(node_state) - 1
                break
            k = end_keys[j]
            if k in closed:
                continue
            prev = best.get(k)
            if prev is not None and node_cost[prev] <= new_cost:
                continue
            node_state.append(ends[j])
            node_parent.append(u)
            node_control.append(controls[j])
            node_dir.append(int(direction[j]))
            node_cost.append(new_cost)
            node_segment.append(traj_arr[:, j])
            idx = len(node_state) - 1
            best[k] = idx
            heapq.heappush(open_heap, (new_cost + float(h_end[j]), new_cost, idx))
    if goal_node < 0:
        raise NoPathError(f"hybrid A* found no path after {expanded} expansions")
    chain = []
    i = goal_node
    while i > 0:
        chain.append(i)
        i = node_parent[i]
    chain.reverse()
    states_out = [start[None]]
    controls_out = []
    reverse_out = []
    for i in chain:
        seg = node_segment[i]
        states_out.append(seg)
        controls_out.append(np.repeat(node_control[i][None], len(seg), 0))
        reverse_out.append(np.full(len(seg), node_dir[i] < 0))
    states_arr = np.concatenate(states_out)
    controls_arr = (np.concatenate(controls_out) if controls_out
                    else np.zeros((0, controls.shape[1])))
    reverse_arr = np.concatenate(reverse_out) if reverse_out else np.zeros(0, dtype=bool)
    length = float(np.linalg.norm(np.diff(states_arr[:, :2], axis=0), axis=1).sum())
    log.debug("hybrid A*: %d expansions, %d states, length %.2f", expanded, len(states_arr),
              length)
    return HybridPath(states_arr, controls_arr, reverse_arr, float(node_cost[goal_node]), length,
                      expanded)


def car_step(wheelbase: float = 2.5, dt: float = 0.1) -> StepFn:
    """Kinematic bicycle ``[x, y, theta]``, controls ``[speed m/s, steer rad]``:
    ``x += v cos(theta) dt, y += v sin(theta) dt, theta += v tan(steer) / wheelbase dt``."""

    def step(states: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        x, y, th = states[:, 0], states[:, 1], states[:, 2]
        v, steer = ctrl[:, 0], ctrl[:, 1]
        return np.stack(
            [x + v * np.cos(th) * dt, y + v * np.sin(th) * dt,
             wrap(th + v * np.tan(steer) / wheelbase * dt)], axis=1)

    return step


def car_primitives(speed: float = 1.0, max_steer: float = 0.6, n_steer: int = 5,
                   reverse: bool = True) -> np.ndarray:
    """``[M, 2]`` controls: ``n_steer`` steering angles in [-max_steer, max_steer], forward
    and (if ``reverse``) backward at ``speed``."""
    steers = np.linspace(-max_steer, max_steer, n_steer)
    speeds = [speed, -speed] if reverse else [speed]
    return np.array([[v, s] for v in speeds for s in steers])
