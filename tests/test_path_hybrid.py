"""Hybrid A* for a car-like robot: feasible, collision-free, reaches the goal, reverses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worldplan.envs.maps import OccupancyGrid
from worldplan.planners.path import NoPathError
from worldplan.planners.path.hybrid_astar import (
    car_primitives,
    car_step,
    grid_heuristic,
    hybrid_astar,
    wrap,
)


def _world(occ: np.ndarray, resolution: float = 0.25, radius: float = 0.4):
    grid = OccupancyGrid(occ, resolution=resolution)
    inflated = grid.inflate(radius)
    return grid, inflated, (lambda s: inflated.is_free(s[:, :2]))


def _check_feasible(path, step, start, is_free) -> None:
    np.testing.assert_allclose(path.states[0], start)
    # Every state follows from the previous one by the kinematic step.
    replay = step(path.states[:-1], path.controls)
    np.testing.assert_allclose(replay[:, :2], path.states[1:, :2], atol=1e-9)
    np.testing.assert_allclose(wrap(replay[:, 2] - path.states[1:, 2]), 0.0, atol=1e-9)
    assert is_free(path.states).all()


def test_car_drives_around_a_wall() -> None:
    occ = np.zeros((60, 60), dtype=bool)  # 15 m x 15 m
    occ[28:32, :44] = True  # a wall across, gap on the right
    grid, inflated, is_free = _world(occ)
    step = car_step(wheelbase=1.0, dt=0.25)
    start = np.array([2.0, 2.0, 0.0])
    goal = np.array([2.0, 12.0, math.pi])
    path = hybrid_astar(start, goal, step, car_primitives(speed=1.0, max_steer=0.6), is_free,
                        resolution=0.5, heading_bins=36, steps_per_primitive=4,
                        heuristic=grid_heuristic(inflated, goal[:2]))
    _check_feasible(path, step, start, is_free)
    end = path.states[-1]
    assert np.linalg.norm(end[:2] - goal[:2]) <= 0.5
    assert abs(wrap(end[2] - goal[2])) <= math.radians(10)
    assert path.states[:, 0].max() > 11.0  # it went through the gap on the right
    assert path.length >= 10.0


def test_car_reverses_in_a_dead_end_corridor() -> None:
    # A corridor 1.5 m wide: the car cannot turn round, so reaching a goal behind it with
    # the same heading means backing up.
    occ = np.ones((8, 60), dtype=bool)
    occ[2:6, 1:59] = False  # free corridor y in [0.5, 1.5], x in [0.25, 14.75]
    grid, inflated, is_free = _world(occ, radius=0.2)
    step = car_step(wheelbase=1.0, dt=0.25)
    start = np.array([10.0, 1.0, 0.0])
    goal = np.array([4.0, 1.0, 0.0])
    path = hybrid_astar(start, goal, step, car_primitives(speed=1.0, max_steer=0.5), is_free,
                        resolution=0.25, heading_bins=36, steps_per_primitive=4)
    _check_feasible(path, step, start, is_free)
    assert path.reverse.mean() > 0.8
    assert np.linalg.norm(path.states[-1, :2] - goal[:2]) <= 0.5


def test_no_path_and_bad_input() -> None:
    occ = np.zeros((20, 20), dtype=bool)
    occ[:, 10] = True  # a full wall
    _, _, is_free = _world(occ, radius=0.0)
    step = car_step(1.0, 0.25)
    prims = car_primitives()
    with pytest.raises(NoPathError):
        hybrid_astar([1.0, 1.0, 0.0], [4.0, 1.0, 0.0], step, prims, is_free, max_expansions=300)
    with pytest.raises(ValueError, match="start"):
        hybrid_astar([2.6, 1.0, 0.0], [4.0, 1.0, 0.0], step, prims, is_free)
    with pytest.raises(ValueError, match="goal"):
        hybrid_astar([1.0, 1.0, 0.0], [2.6, 1.0, 0.0], step, prims, is_free)
    with pytest.raises(ValueError, match="controls"):
        hybrid_astar([1.0, 1.0, 0.0], [2.0, 1.0, 0.0], step, np.zeros(3), is_free)
    with pytest.raises(ValueError, match="start and goal"):
        hybrid_astar([1.0, 1.0], [2.0, 1.0], step, prims, is_free)


@pytest.mark.slow
def test_truck_backs_around_an_obstacle_to_the_dock() -> None:
    """The lead's truck-and-trailer kinematics (backing only): the trailer rear reaches the
    dock square to the wall, around a block standing between it and the dock."""
    from worldplan.envs.truck.kinematics import (
        TruckParams,
        cab_front,
        hitch_angle,
        step_np,
        trailer_rear,
    )

    p = TruckParams()
    block = (26.0, 34.0, -15.0, 5.0)  # x0, x1, y0, y1

    def points_free(pts: np.ndarray) -> np.ndarray:
        ok = (pts[:, 0] >= -0.5) & (pts[:, 0] <= p.yard_x[1])
        ok &= (pts[:, 1] >= p.yard_y[0]) & (pts[:, 1] <= p.yard_y[1])
        x0, x1, y0, y1 = block
        return ok & ~((pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0)
                      & (pts[:, 1] <= y1))

    def is_free(s: np.ndarray) -> np.ndarray:
        rear = trailer_rear(s, p)
        ok = np.abs(hitch_angle(s)) < math.radians(80)  # no jackknife
        for t in np.linspace(0, 1, 5):  # along the trailer
            ok &= points_free(rear + t * (s[:, :2] - rear))
        return ok & points_free(cab_front(s, p))

    def docked(s: np.ndarray) -> np.ndarray:
        rear = trailer_rear(s, p)
        return (np.linalg.norm(rear, axis=1) <= 1.0) & (np.abs(wrap(s[:, 3])) <= math.radians(10))

    steers = np.radians(np.linspace(-35, 35, 7))[:, None]
    start = np.array([80.0, -5.0, 0.0, 0.0])  # trailer rear at (66, -5), block in the way
    goal = np.array([p.trailer_length, 0.0, 0.0, 0.0])
    path = hybrid_astar(start, goal, lambda s, u: step_np(s, u[:, 0], p), steers, is_free,
                        resolution=2.0, heading_bins=36, angle_dims=(2, 3),
                        steps_per_primitive=8, reverse_cost=1.0, switch_cost=0.0,
                        steer_cost=0.0, heuristic_weight=1.5, max_expansions=30_000,
                        goal_fn=docked)
    assert docked(path.states[-1:])[0]
    assert is_free(path.states).all()
    replay = step_np(path.states[:-1], path.controls[:, 0], p)
    np.testing.assert_allclose(replay, path.states[1:], atol=1e-9)
    rear = trailer_rear(path.states, p)
    # It went around the block: the rear passed beside it, never through it.
    beside = (rear[:, 0] > 26) & (rear[:, 0] < 34)
    assert beside.any() and ((rear[beside, 1] > 5) | (rear[beside, 1] < -15)).all()
