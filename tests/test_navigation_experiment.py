"""The navigation task end to end on a couple of maps, and its building blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worldplan.envs.maps import OccupancyGrid
from worldplan.experiments.navigation import (
    TASK,
    NavigationConfig,
    PurePursuit,
    evaluate,
    plan_path,
)
from worldplan.experiments.runs import Run


def test_plan_path_is_free_for_the_robot() -> None:
    occ = np.zeros((20, 20), dtype=bool)
    occ[0, :] = occ[-1, :] = occ[:, 0] = occ[:, -1] = True
    occ[5:15, 10] = True
    grid = OccupancyGrid(occ, resolution=0.5)
    start, goal = np.array([2.0, 5.0]), np.array([8.0, 5.0])
    rng = np.random.default_rng(0)
    for planner in ("astar", "rrt_star"):
        cfg = NavigationConfig(planner=planner, rrt_time=0.3)
        path = plan_path(grid, start, goal, cfg, radius=0.15, rng=rng)
        np.testing.assert_allclose(path[0], start)
        np.testing.assert_allclose(path[-1], goal)
        inflated = grid.inflate(0.15)  # the robot disc (coarsely) never overlaps a wall
        t = np.linspace(0, 1, 200)[:, None]
        fine = grid.upsample(5).inflate(0.15)
        for a, b in zip(path[:-1], path[1:], strict=True):
            assert fine.is_free(a + t * (b - a)).all()
        assert inflated.shape == grid.shape
        # Around the wall: longer than the straight line.
        assert np.linalg.norm(np.diff(path, axis=0), axis=1).sum() > 6.5
    with pytest.raises(ValueError, match="planner"):
        plan_path(grid, start, goal, NavigationConfig(planner="dfs"), 0.15, rng)


def test_pure_pursuit_heads_along_the_path() -> None:
    path = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]])
    pp = PurePursuit(path, speed=0.5, lookahead=0.5, dt=0.1)
    cmd = pp(np.array([0.0, 0.0]))
    np.testing.assert_allclose(cmd, [0.5, 0.0], atol=1e-9)
    cmd = pp(np.array([1.9, 0.0]))  # past the corner's lookahead: turning up
    assert cmd[1] > 0 and np.linalg.norm(cmd) == pytest.approx(0.5)
    assert np.linalg.norm(pp(np.array([2.0, 1.99]))) < 0.5  # slows near the goal


def test_quick_evaluation_writes_metrics_and_figures(tmp_path) -> None:
    assert set(TASK.presets) == {"default", "quick"} and "evaluate" in TASK.stages
    cfg = TASK.presets["quick"]()
    cfg.episodes, cfg.figure_episodes, cfg.n_particles = 2, 1, 100
    run = Run.create(tmp_path / "run", "navigation")
    metrics = evaluate(cfg, run)
    saved = json.loads((run.path / "metrics.json").read_text())["evaluate"]
    assert saved["episodes"] == 2
    assert metrics["success_rate"] == 1.0  # two easy seeded maps
    assert metrics["mean_localisation_error_m"] < 0.2
    for name in ("maps_paths.png", "particles.png", "localisation_error.png"):
        assert (run.figures / name).stat().st_size > 10_000
    with pytest.raises(ValueError, match="episodes"):
        evaluate(NavigationConfig(episodes=0), run)
    with pytest.raises(ValueError, match="tracker"):
        evaluate(NavigationConfig(tracker="teleport"), run)


def test_mppi_tracker_reaches_the_goal_without_contacts() -> None:
    from worldplan.envs.navigation import Navigation2DEnv
    from worldplan.experiments.navigation import run_episode

    cfg = NavigationConfig(tracker="mppi", n_particles=100)
    env = Navigation2DEnv(map_config=cfg.map, max_steps=cfg.max_steps)
    rec = run_episode(env, cfg, seed=1)
    assert rec.success and rec.collisions == 0
    assert np.linalg.norm(rec.true[-1] - rec.goal) <= env.params.goal_radius
