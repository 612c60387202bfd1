"""envs/gym_tasks: one module per task registers it; MountainCarContinuous-v0 end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldplan.envs.gym_tasks import (
    TASK_MODELS,
    GymTaskModel,
    MountainCarTaskModel,
    make_env,
    make_task_model,
)
from worldplan.envs.interface import TaskModel
from worldplan.experiments.mujoco import ENV_DEFAULTS, MujocoConfig
from worldplan.planners.mpc import MPPI

torch.set_num_threads(1)


def test_every_task_module_registers_its_adapter() -> None:
    assert set(TASK_MODELS) == {"Pendulum-v1", "InvertedPendulum-v5", "Reacher-v5",
                                "HalfCheetah-v5", "MountainCarContinuous-v0"}
    for env_id, cls in TASK_MODELS.items():
        assert cls.env_id == env_id and issubclass(cls, GymTaskModel)
        assert ENV_DEFAULTS[env_id] is cls.planning  # the CLI reads the task's own defaults
    MujocoConfig(env="MountainCarContinuous-v0", model="true").validate()


def test_a_second_adapter_for_one_env_is_refused() -> None:
    with pytest.raises(ValueError, match="two task models for Pendulum-v1"):
        type("Other", (GymTaskModel,), {"env_id": "Pendulum-v1"})
    assert TASK_MODELS["Pendulum-v1"].__name__ == "PendulumTaskModel"


def test_mountain_car_step_and_reward_equal_gymnasium() -> None:
    env = make_env("MountainCarContinuous-v0")
    tm = env.unwrapped.task_model
    assert isinstance(tm, TaskModel) and tm.state_dim == 2 and tm.action_dim == 1
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    rows, reached = [], 0
    for t in range(3000):
        # a bang-bang swing (with noise) reaches the flag, so the goal reward is exercised
        push = np.sign(obs[1]) if obs[1] != 0 else 1.0
        action = np.clip(push + rng.normal(0, 0.5, 1), -1.3, 1.3).astype(np.float32)
        nxt, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, nxt, reward))
        reached += terminated
        obs = env.reset(seed=t)[0] if terminated or truncated else nxt
    env.close()
    s, a, s1 = (torch.tensor(np.stack([r[i] for r in rows])) for i in range(3))
    reward = torch.tensor([r[3] for r in rows], dtype=torch.float32)
    assert reached >= 5 and (s[:, 0] <= -1.2 + 1e-6).any()  # the flag and the left wall
    torch.testing.assert_close(tm.step(s, a), s1, rtol=0, atol=1e-6)
    torch.testing.assert_close(tm.reward(s, a, s1), reward, rtol=0, atol=1e-5)


def test_mountain_car_reads_the_env_and_its_energy_is_zero_at_the_flag() -> None:
    env = make_env("MountainCarContinuous-v0", goal_velocity=0.01)
    assert env.unwrapped.task_model.goal_velocity == pytest.approx(0.01)
    env.close()
    tm = make_task_model("MountainCarContinuous-v0")
    flag = torch.tensor([[0.45, 0.0]])
    valley = torch.tensor([[-np.pi / 6, 0.0]])
    assert tm.missing_energy(flag).item() == pytest.approx(0.0, abs=1e-7)
    assert tm.missing_energy(valley).item() == pytest.approx(1.0, abs=1e-4)


def _reach_flag(tm: MountainCarTaskModel, steps: int = 300) -> torch.Tensor:
    """MPPI on the true dynamics from 4 valley starts; the step each one reached the flag."""
    planner = MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, horizon=30,
                   terminal_cost=tm.terminal_cost, samples=500, noise_sigma=0.25, seed=0)
    x = torch.stack([torch.linspace(-0.6, -0.4, 4), torch.zeros(4)], dim=1)
    reached = torch.full((4,), steps)
    for t in range(steps):
        x = tm.step(x, planner.act(x))
        reached = torch.where(tm.terminated(x) & (reached == steps), t + 1, reached)
    return reached


def test_mpc_reaches_the_flag_only_with_the_energy_terminal_cost() -> None:
    reached = _reach_flag(MountainCarTaskModel())
    assert (reached < 250).all(), reached
    blind = _reach_flag(MountainCarTaskModel(energy_weight=0.0), steps=150)
    assert (blind == 150).all(), blind  # 30 steps never see the flag from the valley
