"""envs/gym_tasks: Pendulum-v1 torch dynamics vs gymnasium, MuJoCo adapters' rewards,
the receding-horizon controller on single and vector envs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldplan.envs.gym_tasks import (
    TASK_MODELS,
    PendulumTaskModel,
    make_env,
    make_task_model,
    make_vector_env,
)
from worldplan.envs.interface import Costs, Dynamics, Map, Sensor, TaskModel
from worldplan.planners.mpc import CEM, MPPI, GradientMPC, RecedingHorizonController

torch.set_num_threads(1)


def rollout(env_id: str, steps: int, seed: int = 0):
    env = make_env(env_id)
    tm = env.unwrapped.task_model
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(steps):
        action = rng.uniform(env.action_space.low * 1.2, env.action_space.high * 1.2)
        action = action.astype(np.float32)
        nxt, reward, terminated, truncated, info = env.step(action)
        rows.append((obs, action, nxt, reward, terminated, info))
        if terminated or truncated:
            obs, _ = env.reset(seed=seed + 1)
        else:
            obs = nxt
    env.close()
    return tm, rows


def test_pendulum_step_and_reward_equal_gymnasium() -> None:
    tm, rows = rollout("Pendulum-v1", 200)
    obs = torch.tensor(np.stack([r[0] for r in rows]), dtype=torch.float64)
    act = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.float64)
    nxt = torch.tensor(np.stack([r[2] for r in rows]), dtype=torch.float64)
    reward = torch.tensor([r[3] for r in rows], dtype=torch.float64)
    pred = tm.step(obs, act)
    torch.testing.assert_close(pred, nxt, rtol=0, atol=1e-5)
    torch.testing.assert_close(tm.reward(obs, act, pred), reward, rtol=0, atol=1e-5)
    torch.testing.assert_close(-tm.cost(obs, act), reward, rtol=0, atol=1e-5)
    # float32 batched, as planners use it
    pred32 = tm.step(obs.float(), act.float())
    assert pred32.dtype == torch.float32
    torch.testing.assert_close(pred32.double(), nxt, rtol=0, atol=1e-5)


def test_pendulum_is_differentiable_and_reads_env_constants() -> None:
    env = make_env("Pendulum-v1", g=9.81)
    tm = env.unwrapped.task_model
    assert isinstance(tm, TaskModel) and isinstance(tm, PendulumTaskModel)
    assert tm.g == pytest.approx(9.81) and tm.dt == pytest.approx(0.05)
    x = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    u = torch.tensor([[0.3]], requires_grad=True)
    out = tm.cost(tm.step(x, u), u).sum() + tm.terminal_cost(x).sum()
    gx, gu = torch.autograd.grad(out, (x, u))
    assert torch.isfinite(gx).all() and gu.abs().item() > 0
    env.close()


def test_inverted_pendulum_reward_and_termination_exact() -> None:
    tm, rows = rollout("InvertedPendulum-v5", 150)
    for obs, act, nxt, reward, terminated, _ in rows:
        o, a, n = (torch.tensor(v[None], dtype=torch.float32) for v in (obs, act, nxt))
        assert bool(tm.terminated(n)[0]) == terminated
        assert tm.reward(o, a, n).item() == reward
    assert any(r[4] for r in rows)  # random actions do topple it
    upright = torch.zeros(1, 4)
    tilted = torch.tensor([[0.0, 0.2, 0.0, 0.0]])
    assert tm.cost(upright, torch.zeros(1, 1)).item() == 0.0
    assert tm.cost(tilted, torch.zeros(1, 1)).item() == pytest.approx(1.0)


def test_reacher_reward_exact() -> None:
    tm, rows = rollout("Reacher-v5", 60)
    obs = torch.tensor(np.stack([r[0] for r in rows]), dtype=torch.float32)
    act = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.float32)
    nxt = torch.tensor(np.stack([r[2] for r in rows]), dtype=torch.float32)
    # gymnasium rewards the action it was given (before clipping)
    reward = torch.tensor([r[3] for r in rows], dtype=torch.float32)
    torch.testing.assert_close(tm.reward(obs, act, nxt), reward, rtol=0, atol=1e-5)
    dist = torch.tensor([r[5]["reward_dist"] for r in rows], dtype=torch.float32)
    torch.testing.assert_close(-tm.state_cost(nxt), dist, rtol=0, atol=1e-5)


def test_half_cheetah_reward_close() -> None:
    tm, rows = rollout("HalfCheetah-v5", 100)
    obs = torch.tensor(np.stack([r[0] for r in rows]), dtype=torch.float32)
    act = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.float32)
    nxt = torch.tensor(np.stack([r[2] for r in rows]), dtype=torch.float32)
    ctrl = torch.tensor([r[5]["reward_ctrl"] for r in rows], dtype=torch.float32)
    torch.testing.assert_close(-tm.action_cost(act), ctrl, rtol=1e-5, atol=1e-6)
    reward = np.array([r[3] for r in rows])
    pred = tm.reward(obs, act, nxt).numpy()
    assert np.corrcoef(pred, reward)[0, 1] > 0.9
    assert np.abs(pred - reward).mean() < 0.3


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "Reacher-v5", "HalfCheetah-v5"])
def test_mujoco_adapters_follow_protocol(env_id: str) -> None:
    env = make_env(env_id)
    tm = env.unwrapped.task_model
    assert isinstance(tm, TaskModel)
    assert tm.state_dim == env.observation_space.shape[0]
    assert tm.action_dim == env.action_space.shape[0]
    np.testing.assert_allclose(tm.action_low.numpy(), env.action_space.low)
    np.testing.assert_allclose(tm.action_high.numpy(), env.action_space.high)
    x = torch.randn(5, tm.state_dim, requires_grad=True)
    u = torch.randn(5, tm.action_dim)
    assert not isinstance(tm, Dynamics) and not tm.has_dynamics  # a world model learns them
    assert isinstance(tm, Costs) and not isinstance(tm, Sensor) and not isinstance(tm, Map)
    c = tm.cost(x, u)
    assert c.shape == (5,) and tm.terminal_cost(x).shape == (5,)
    (g,) = torch.autograd.grad(c.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert tm.terminated(x.detach()).dtype == torch.bool
    env.close()


def test_unknown_env_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown env"):
        make_env("CartPole-v1")
    with pytest.raises(ValueError, match="unknown env"):
        make_task_model("Nope-v0")
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env("Pendulum-v1", 0)
    assert set(TASK_MODELS) == {"Pendulum-v1", "InvertedPendulum-v5", "Reacher-v5",
                                "HalfCheetah-v5", "MountainCarContinuous-v0"}
    with pytest.raises(TypeError, match="planner"):
        RecedingHorizonController("cem")


def test_controller_single_and_vector_env_agree() -> None:
    tm = PendulumTaskModel()

    def planner() -> MPPI:
        return MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, 10, samples=100,
                    noise_sigma=1.0, seed=0)

    env = make_env("Pendulum-v1")
    single = RecedingHorizonController(planner()).run(env, seed=3, max_steps=20, progress=False,
                                                      record=True)
    assert single.returns.shape == (1,) and single.lengths[0] == 20
    assert single.transitions["obs"].shape == (20, 3)
    assert single.transitions["action"].shape == (20, 1)
    venv = make_vector_env("Pendulum-v1", 3)
    vec = RecedingHorizonController(planner()).run(venv, seed=3, max_steps=20, progress=False)
    assert vec.returns.shape == (3,) and (vec.lengths == 20).all()
    assert vec.env_steps == 60 and len(vec.plan_ms) == 20
    # the vector env seeds its copies seed, seed + 1, ...: copy 0 starts like the single env
    assert np.isfinite(vec.returns).all()
    env.close()
    venv.close()


def test_controller_stops_terminated_episodes() -> None:
    env = make_env("InvertedPendulum-v5")
    tm = env.unwrapped.task_model

    def push(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # a wrong model: tips it over
        return x + torch.cat([torch.zeros_like(u), -u, torch.zeros_like(u),
                              torch.zeros_like(u)], -1)

    planner = CEM(push, tm.cost, tm.action_low, tm.action_high, 3, samples=20, elites=5)
    result = RecedingHorizonController(planner).run(env, seed=0, max_steps=300, progress=False)
    assert result.lengths[0] < 300 and result.returns[0] == result.lengths[0] - 1
    env.close()


SWING_UP = {  # the settings of `worldplan mujoco evaluate --env Pendulum-v1 --model true`
    "mppi": lambda tm: MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, 30, samples=1000,
                            temperature=1.0, noise_sigma=1.0, terminal_cost=tm.terminal_cost,
                            seed=0),
    "cem": lambda tm: CEM(tm.step, tm.cost, tm.action_low, tm.action_high, 30,
                          terminal_cost=tm.terminal_cost, samples=200, elites=20,
                          iterations=4, beta=2.0, keep_elites=0.3, seed=0),
    "gradient": lambda tm: GradientMPC(tm.step, tm.cost, tm.action_low, tm.action_high, 30,
                                       terminal_cost=tm.terminal_cost, iterations=10, lr=0.3,
                                       restarts=4, seed=0),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWING_UP))
def test_pendulum_swing_up_true_dynamics(name: str) -> None:
    venv = make_vector_env("Pendulum-v1", 4)
    planner = SWING_UP[name](PendulumTaskModel())
    # the first 4 of the 10 seeded episodes of `worldplan mujoco evaluate` (seeds 0-3)
    result = RecedingHorizonController(planner).run(venv, seed=0, progress=False)
    venv.close()
    assert (result.lengths == 200).all()
    assert result.returns.mean() >= -200, result.returns


def test_controller_exploration_draws_fresh_noise_each_step() -> None:
    tm = PendulumTaskModel()
    planner = MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, 3, samples=10, seed=0)
    draws: list[np.ndarray] = []

    def explore(action: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws.append(rng.normal(size=action.shape))
        return action + draws[-1]

    env = make_env("Pendulum-v1")
    ctrl = RecedingHorizonController(planner, exploration=explore)
    result = ctrl.run(env, seed=0, max_steps=5, progress=False, record=True)
    env.close()
    assert len(draws) == 5 and len({float(d[0, 0]) for d in draws}) == 5
    assert (np.abs(result.transitions["action"]) <= 2.0).all()  # clipped to the bounds
