"""RRT, RRT*, informed RRT*, PRM*: collision-free paths, monotone best cost, convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worldplan.envs.maps import OccupancyGrid
from worldplan.planners.path import (
    Space,
    informed_rrt_star,
    path_length,
    prm,
    rrt,
    rrt_star,
    shortcut,
)

START, GOAL = np.array([0.05, 0.05]), np.array([0.95, 0.95])


def circle_map(seed: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    while len(centres) < n:
        c, r = rng.random(2), rng.uniform(0.04, 0.08)
        if min(np.linalg.norm(c - START), np.linalg.norm(c - GOAL)) > r + 0.02:
            centres.append(c)
            radii.append(r)
    return np.array(centres), np.array(radii)


def densely_free(path: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> bool:
    """Every segment sampled at 1000 points lies outside every disc and inside the square."""
    t = np.linspace(0, 1, 1000)[:, None]
    for a, b in zip(path[:-1], path[1:], strict=True):
        pts = a + t * (b - a)
        if (pts < 0).any() or (pts > 1).any():
            return False
        d = np.linalg.norm(pts[:, None, :] - centres[None], axis=2)
        if (d <= radii[None]).any():
            return False
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("informed", [False, True])
def test_rrt_star_paths_are_collision_free_and_cost_never_increases(seed, informed) -> None:
    centres, radii = circle_map(seed)
    space = Space.from_circles(centres, radii)
    result = rrt_star(space, START, GOAL, max_iterations=800, time_limit=None, seed=seed,
                      informed=informed)
    assert result.solved
    np.testing.assert_allclose(result.path[0], START)
    np.testing.assert_allclose(result.path[-1], GOAL)
    assert densely_free(result.path, centres, radii)
    # The tree's own best path is collision-free too.
    costs = result.history[:, 2]
    assert np.all(np.diff(costs) < 0), "best cost must only go down"
    assert np.all(np.diff(result.history[:, 0]) > 0)
    assert costs[-1] == pytest.approx(result.tree_cost)
    assert result.cost <= result.tree_cost + 1e-9
    assert result.cost == pytest.approx(path_length(result.path))
    assert result.cost >= np.linalg.norm(GOAL - START) - 1e-9


def test_best_cost_is_monotone_in_the_budget() -> None:
    centres, radii = circle_map(4)
    space = Space.from_circles(centres, radii)
    costs = [
        rrt_star(space, START, GOAL, max_iterations=n, time_limit=None, seed=7,
                 shortcut_rounds=0).tree_cost
        for n in (200, 400, 800)
    ]
    assert costs[0] >= costs[1] >= costs[2]
    assert math.isfinite(costs[2])


@pytest.mark.parametrize("informed", [False, True])
def test_converges_to_straight_line_on_empty_square(informed) -> None:
    space = Space(np.zeros(2), np.ones(2), lambda p: np.ones(len(p), dtype=bool))
    result = rrt_star(space, START, GOAL, max_iterations=1500, time_limit=None, seed=0,
                      try_direct=False, shortcut_rounds=0, informed=informed)
    straight = float(np.linalg.norm(GOAL - START))
    assert result.tree_cost <= 1.02 * straight
    assert len(result.history) > 3  # it got there by improving, not in one step


def test_rrt_and_prm_solve_and_are_collision_free() -> None:
    centres, radii = circle_map(3)
    space = Space.from_circles(centres, radii)
    r = rrt(space, START, GOAL, seed=1)
    assert r.solved and densely_free(r.path, centres, radii)
    assert len(r.history) == 1
    p = prm(space, START, GOAL, n_samples=800, seed=1, shortcut_rounds=100)
    assert p.solved and densely_free(p.path, centres, radii)
    assert p.cost <= p.tree_cost + 1e-9


def test_three_dimensional_box_with_default_segment_sampling() -> None:
    centre, radius = np.array([0.5, 0.5, 0.5]), 0.3

    def is_free(points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(points - centre, axis=1) > radius

    space = Space(np.zeros(3), np.ones(3), is_free, collision_step=0.005)
    start, goal = np.array([0.1, 0.1, 0.1]), np.array([0.9, 0.9, 0.9])
    result = informed_rrt_star(space, start, goal, max_iterations=600, time_limit=None, seed=0)
    assert result.solved
    t = np.linspace(0, 1, 500)[:, None]
    for a, b in zip(result.path[:-1], result.path[1:], strict=True):
        assert is_free(a + t * (b - a)).all()
    # Going around a ball of radius 0.3 costs more than the straight line.
    assert result.cost > np.linalg.norm(goal - start)


def test_grid_space() -> None:
    occ = np.zeros((40, 40), dtype=bool)
    occ[:30, 20] = True
    grid = OccupancyGrid(occ, resolution=0.025)
    space = Space.from_grid(grid)
    result = rrt_star(space, [0.1, 0.1], [0.9, 0.1], max_iterations=600, time_limit=None, seed=2)
    assert result.solved
    t = np.linspace(0, 1, 400)[:, None]
    for a, b in zip(result.path[:-1], result.path[1:], strict=True):
        assert grid.is_free(a + t * (b - a)).all()
    assert result.path[:, 1].max() > 0.75  # it went over the wall


def test_shortcut_never_lengthens() -> None:
    centres, radii = circle_map(5)
    space = Space.from_circles(centres, radii)
    raw = rrt(space, START, GOAL, seed=3).path
    short = shortcut(space, raw, np.random.default_rng(0), rounds=100)
    assert path_length(short) <= path_length(raw) + 1e-12
    assert densely_free(short, centres, radii)


def test_bad_input() -> None:
    centres, radii = circle_map(0)
    space = Space.from_circles(centres, radii)
    with pytest.raises(ValueError, match="start"):
        rrt_star(space, centres[0], GOAL)
    with pytest.raises(ValueError, match="goal"):
        rrt_star(space, START, [1.5, 0.5])
    with pytest.raises(ValueError, match="goal"):
        rrt_star(space, START, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="budget"):
        rrt_star(space, START, GOAL, max_iterations=None, time_limit=None)
    with pytest.raises(ValueError, match="time_limit"):
        rrt_star(space, START, GOAL, time_limit=-1.0)
    with pytest.raises(ValueError, match="goal_bias"):
        rrt(space, START, GOAL, goal_bias=2.0)
    with pytest.raises(ValueError, match="high"):
        Space(np.ones(2), np.zeros(2), lambda p: np.ones(len(p), dtype=bool))
    with pytest.raises(TypeError, match="space"):
        rrt_star("square", START, GOAL)
