"""Navigation2D-v0: gymnasium compliance, MJCF from the map, TaskModel twin, sensing."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from worldplan import envs  # registers the environments
from worldplan.envs.maps import OccupancyGrid
from worldplan.envs.navigation import Navigation2DEnv, NavigationParams, mjcf_from_grid


def test_check_env_and_render() -> None:
    env = gym.make("worldplan/Navigation2D-v0", render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=3)
    assert obs.shape == (8,) and obs.dtype == np.float32
    assert info["state"].shape == (4,)
    frame = env.render()
    assert frame.shape == (400, 400, 3) and frame.dtype == np.uint8
    tm = env.unwrapped.task_model
    assert isinstance(tm, envs.TaskModel)
    assert isinstance(tm.occupancy, OccupancyGrid)
    assert tm.occupancy is env.unwrapped.grid


def test_reset_is_seeded_and_start_goal_are_free() -> None:
    env = Navigation2DEnv()
    o1, i1 = env.reset(seed=11)
    grid1, goal1 = env.grid, env.goal.copy()
    o2, i2 = env.reset(seed=11)
    assert env.grid == grid1 and np.array_equal(env.goal, goal1)
    np.testing.assert_array_equal(o1, o2)
    inflated = env.grid.inflate(env.params.radius)
    assert inflated.is_free(np.stack([env.start, env.goal])).all()
    assert np.linalg.norm(env.start - env.goal) >= env.map_config.min_start_goal


def test_task_model_matches_mujoco_in_free_space() -> None:
    params = NavigationParams(action_noise=0.0)
    env = Navigation2DEnv(params=params)
    grid = OccupancyGrid(np.zeros((20, 20), dtype=bool), resolution=0.5)
    env.reset(seed=0, options={"map": grid, "start": (2.0, 2.0), "goal": (8.0, 8.0)})
    tm = env.unwrapped.task_model
    state = torch.tensor(env._state(), dtype=torch.float64)[None]
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1, 1, size=2)
        _, _, _, _, info = env.step(action)
        state = tm.step(state, torch.tensor(action[None]))
        np.testing.assert_allclose(state[0].numpy(), info["state"], atol=1e-6)
    assert tm.step(state.float(), torch.zeros(1, 2)).shape == (1, 4)


def test_ranges_are_noisy_landmark_distances() -> None:
    env = Navigation2DEnv(params=NavigationParams(range_noise=0.1))
    errors = []
    obs, info = env.reset(seed=5)
    env.action_space.seed(5)
    for _ in range(30):
        true = np.linalg.norm(env.landmarks - info["state"][:2], axis=1)
        errors.append(obs[:-2] - true)
        obs, _, _, _, info = env.step(env.action_space.sample())
    errors = np.concatenate(errors)
    assert abs(errors.mean()) < 0.05 and 0.07 < errors.std() < 0.13
    np.testing.assert_allclose(obs[-2:], env.goal)
    tm = env.task_model
    assert tm.measurement_noise.shape == (6, 6) and tm.process_noise.shape == (4, 4)


def test_walls_stop_the_robot() -> None:
    occ = np.zeros((10, 10), dtype=bool)
    occ[:, 6] = True  # a wall at x in [3, 3.5]
    grid = OccupancyGrid(occ, resolution=0.5)
    env = Navigation2DEnv(params=NavigationParams(action_noise=0.0))
    env.reset(seed=0, options={"map": grid, "start": (1.0, 2.5), "goal": (1.0, 4.5)})
    collided = False
    for _ in range(40):
        _, _, _, _, info = env.step(np.array([1.0, 0.0]))
        collided |= info["collision"]
    assert collided
    assert info["state"][0] < 3.0 - env.params.radius + 0.02


def test_mjcf_has_one_box_per_run() -> None:
    occ = np.zeros((3, 6), dtype=bool)
    occ[0, 1:4] = True
    occ[2, [0, 5]] = True
    xml = mjcf_from_grid(OccupancyGrid(occ), NavigationParams())
    assert xml.count('type="box"') == 3


def test_bad_input() -> None:
    env = Navigation2DEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(TypeError, match="map"):
        env.reset(options={"map": np.zeros((3, 3), dtype=bool)})
    grid = OccupancyGrid(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError):
        env.reset(options={"map": grid})
    with pytest.raises(ValueError, match="render_mode"):
        Navigation2DEnv(render_mode="human")


def test_task_model_is_differentiable_and_checks_shapes() -> None:
    env = Navigation2DEnv()
    env.reset(seed=2)
    tm = env.task_model
    state = torch.zeros(3, 4, requires_grad=True)
    action = torch.full((3, 2), 0.5, requires_grad=True)
    total = tm.cost(tm.step(state, action), action).sum() + tm.terminal_cost(state).sum()
    total.backward()
    assert torch.isfinite(state.grad).all() and action.grad.abs().sum() > 0
    assert tm.observe(state.detach()).shape == (3, 6)
    with pytest.raises(ValueError, match="action"):
        tm.step(state.detach(), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="state"):
        tm.cost(torch.full((1, 4), float("nan")), torch.zeros(1, 2))
