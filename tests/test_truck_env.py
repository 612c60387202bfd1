"""The truck backer-upper: kinematics, environment, TaskModel and episode rules."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldplan.envs  # noqa: F401  (registers the environments)
from worldplan.envs.truck import (
    Outcome,
    StartRegion,
    TruckParams,
    TruckTaskModel,
    simulate,
    step_np,
)
from worldplan.envs.truck.env import TruckBackerUpperEnv
from worldplan.envs.truck.kinematics import pose_from_rear, trailer_rear, wrap_angle
from worldplan.experiments.truck_baselines import CascadeController, LQRController


def make_env(**kwargs):
    return gym.make("worldplan/TruckBackerUpper-v0", **kwargs)


def test_env_passes_gymnasium_checker():
    env = make_env(render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def test_env_step_equals_task_model_step():
    env = make_env()
    tm = env.unwrapped.task_model
    rng = np.random.default_rng(0)
    for episode in range(5):
        _, info = env.reset(seed=episode)
        for _ in range(40):
            phi = rng.uniform(-1.3, 1.3, size=1).astype(np.float32)
            state = torch.as_tensor(info["state"][None], dtype=torch.float64)
            expected = tm.step(state, torch.as_tensor(phi[None], dtype=torch.float64))[0].numpy()
            _, _, term, trunc, info = env.step(phi)
            np.testing.assert_allclose(info["state"], expected, atol=1e-6, rtol=0)
            if term or trunc:
                break


@pytest.mark.parametrize("phi", [-1.0, 0.0, 0.4, 1.2])
def test_trailer_axle_has_no_lateral_slip(phi):
    """With a small step the trailer rear moves along the trailer's axis only; the sign
    printed in some course notes (sin(theta1 - theta0)) would make it slide sideways."""
    p = TruckParams(dt=1e-4)
    state = pose_from_rear(30.0, 5.0, 0.3, 0.4, p)
    nxt = step_np(state, np.array(phi), p)
    motion = trailer_rear(nxt, p) - trailer_rear(state, p)
    t1 = state[3]
    lateral = motion @ np.array([-math.sin(t1), math.cos(t1)])
    assert abs(lateral) < 1e-3 * np.linalg.norm(motion)
    # The flipped sign slides: the check above can fail.
    flipped = nxt.copy()
    flipped[3] = state[3] + (p.speed / p.trailer_length) * math.sin(state[3] - state[2]) * p.dt
    motion_f = trailer_rear(flipped, p) - trailer_rear(state, p)
    assert abs(motion_f @ np.array([-math.sin(t1), math.cos(t1)])) > 0.1 * np.linalg.norm(motion_f)


def test_cost_compares_angles_modulo_two_pi_and_is_differentiable():
    tm = TruckTaskModel()
    s = torch.tensor([[20.0, 3.0, 0.2, 0.1]], requires_grad=True)
    shifted = s.detach() + torch.tensor([[0.0, 0.0, 2 * math.pi, 2 * math.pi]])
    shifted[:, :2] = s.detach()[:, :2]
    # Shifting both headings by 2 pi moves the hitch's reference frame nowhere.
    assert torch.allclose(tm.terminal_cost(s), tm.terminal_cost(shifted), atol=1e-4)
    tm.terminal_cost(s).sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_stop_at_wall_ends_exactly_at_the_wall_and_holds():
    p = TruckParams()
    tm = TruckTaskModel(p)
    start = torch.tensor(pose_from_rear(2.3, 0.5, 0.0, 0.0, p)[None], dtype=torch.float32)
    dyn = tm.stop_at_wall(tm.step)
    action = torch.zeros(1, 1, requires_grad=True)
    s = start
    for _ in range(5):
        s = dyn(s, action)
    rear = trailer_rear(s, p)
    assert abs(float(rear[0, 0].detach())) < 1e-5
    assert abs(float(rear[0, 1].detach()) - 0.5) < 1e-4
    s.sum().backward()
    assert torch.isfinite(action.grad).all()


def test_straight_back_docks_in_env():
    p = TruckParams()
    env = make_env()
    state = pose_from_rear(10.0, 0.3, 0.0, 0.0, p)
    env.reset(options={"state": state})
    info = {}
    for _ in range(100):
        _, _, term, trunc, info = env.step(np.zeros(1, np.float32))
        if term or trunc:
            break
    assert info["outcome"] == "wall" and info["docked"]
    assert info["position_error"] == pytest.approx(0.3, abs=1e-6)


def test_jackknife_ends_episode():
    p = TruckParams()
    env = make_env()
    env.reset(options={"state": pose_from_rear(40.0, 0.0, 0.0, math.radians(20), p)})
    for _ in range(200):
        _, _, term, trunc, info = env.step(np.array([p.max_steer], np.float32))
        if term or trunc:
            break
    assert info["outcome"] == "jackknife" and not info["docked"]


def test_batched_simulator_matches_env_episodes():
    p = TruckParams()
    ctrl = CascadeController(p)
    starts = StartRegion().sample(np.random.default_rng(3), 6, p)
    result = simulate(starts, ctrl, p)
    env = make_env()
    for i, start in enumerate(starts):
        obs, info = env.reset(options={"state": start})
        for _ in range(p.max_steps):
            _, _, term, trunc, info = env.step(ctrl(info["state"][None]).astype(np.float32))
            if term or trunc:
                break
        assert info["outcome"] == Outcome(result.outcome[i]).name.lower()
        np.testing.assert_allclose(info["final_state"], result.final[i], atol=1e-5)


def test_lqr_closed_loop_is_stable():
    lqr = LQRController(TruckParams())
    eig = np.linalg.eigvals(lqr.A - lqr.B @ lqr.K)
    assert np.abs(eig).max() < 1.0


def test_bad_reset_state_and_render_mode():
    env = make_env()
    with pytest.raises(ValueError, match="options\\['state'\\]"):
        env.reset(options={"state": [1.0, float("nan"), 0.0, 0.0]})
    with pytest.raises(ValueError, match="render_mode"):
        TruckBackerUpperEnv(render_mode="human")


def test_task_model_rejects_bad_shapes():
    tm = TruckTaskModel()
    with pytest.raises(ValueError, match="action must have shape"):
        tm.step(torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="state contains NaN"):
        tm.step(torch.full((1, 4), float("nan")), torch.zeros(1, 1))


def test_wrap_angle():
    a = np.array([-4.0, -math.pi, 0.0, 3.5, 7.0])
    w = wrap_angle(a)
    assert np.all(w >= -math.pi) and np.all(w < math.pi)
    np.testing.assert_allclose(np.cos(w), np.cos(a), atol=1e-12)
