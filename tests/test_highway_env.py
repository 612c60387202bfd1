"""The dense-traffic simulator: kinematics, traffic statistics, rendering, costs, env API."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldplan.envs  # noqa: F401  (registers the environments)
from worldplan.envs.highway import (
    CostConfig,
    Recording,
    ReplayBatch,
    Road,
    Traffic,
    View,
    actions_from_states,
    image_costs_np,
    image_costs_torch,
    record_traffic,
    render_views,
    step_np,
    step_state_torch,
)
from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.replay import COLLISION, SUCCESS
from worldplan.envs.interface import Dynamics


@pytest.fixture(scope="module")
def recording() -> Recording:
    return record_traffic(steps=700, warmup=300, seed=3, progress=False)


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    t = Traffic(seed=1)
    t.populate()
    for _ in range(600):
        t.step()
        t.exit_and_spawn()
    return t


def _random_cars(rng: np.random.Generator, n: int):
    pos = np.stack([rng.uniform(0, 200, n), rng.uniform(1, 21, n)], 1)
    th = rng.uniform(-0.3, 0.3, n)
    return pos, np.stack([np.cos(th), np.sin(th)], 1), rng.uniform(0, 15, n)


# -- kinematics ------------------------------------------------------------------------
def test_numpy_and_torch_kinematics_agree_and_clip() -> None:
    rng = np.random.default_rng(0)
    pos, head, speed = _random_cars(rng, 64)
    length = rng.uniform(4.3, 5.3, 64)
    act = np.stack([rng.uniform(-10, 10, 64), rng.uniform(-0.4, 0.4, 64)], 1)
    p2, h2, s2 = step_np(pos, head, speed, act, length)
    state = torch.as_tensor(np.concatenate([pos, head * speed[:, None]], 1))
    out = step_state_torch(state, torch.as_tensor(act), torch.as_tensor(length)).numpy()
    np.testing.assert_allclose(out[:, :2], p2, atol=1e-9)
    np.testing.assert_allclose(out[:, 2:], h2 * s2[:, None], atol=1e-9)
    # PPUU's order: the position moves with the old speed and heading
    np.testing.assert_allclose(p2, pos + 0.1 * speed[:, None] * head)
    dv = s2 - speed
    assert np.all(np.abs(dv[s2 > 0]) <= MAX_ACCEL * 0.1 + 1e-12)
    # the car-length rule bounds the turn: tan(dtheta) <= speed * dt / length
    dth = np.abs(np.arctan2(h2[:, 1], h2[:, 0]) - np.arctan2(head[:, 1], head[:, 0]))
    assert np.all(np.tan(dth) <= speed * 0.1 / length + 1e-9)


def test_actions_are_recovered_by_inverting_the_update() -> None:
    rng = np.random.default_rng(1)
    n, t_len = 8, 50
    pos, head, speed = _random_cars(rng, n)
    speed += 2.0
    length = np.full(n, 4.8)
    states, acts = [], []
    for _ in range(t_len):
        states.append(np.concatenate([pos, head * speed[:, None]], 1))
        a = np.stack([rng.uniform(-1.5, 1.5, n), rng.uniform(-0.02, 0.02, n)], 1)
        acts.append(a)
        pos, head, speed = step_np(pos, head, speed, a, length)
    states.append(np.concatenate([pos, head * speed[:, None]], 1))
    rec = actions_from_states(np.stack(states, 1))
    np.testing.assert_allclose(rec, np.stack(acts, 1), atol=1e-9)


# -- traffic ---------------------------------------------------------------------------
def test_traffic_is_dense_congested_and_collision_free(traffic: Traffic) -> None:
    t = traffic
    assert t.n >= 100
    seg = (t.pos[:, 0] > t.road.before) & (t.pos[:, 0] < t.road.segment_end)
    assert 3.0 < t.speed[seg].mean() < 10.0
    assert t.length.min() >= 4.3 and t.length.max() <= 5.3
    assert t.width.min() >= 1.8 and t.width.max() <= 2.0
    order = np.lexsort((t.pos[:, 0], t.lane))
    x, ln, length = t.pos[order, 0], t.lane[order], t.length[order]
    gaps = np.diff(x) - (length[1:] + length[:-1]) / 2
    assert gaps[ln[1:] == ln[:-1]].min() > 0.0


def test_recording_has_stop_and_go_and_lane_changes(recording: Recording) -> None:
    r = recording
    seg = r.valid & (r.pos[..., 0] > r.road.before) & (r.pos[..., 0] < r.road.segment_end)
    speeds = r.speed[seg]
    assert 4.0 < speeds.mean() < 9.0, speeds.mean()
    assert speeds.std() > 2.0
    assert (speeds < 1.0).mean() > 0.005  # some cars stop
    lanes = r.road.lane_of(r.pos[..., 1])
    changed = ((np.diff(lanes, axis=0) != 0) & r.valid[1:] & r.valid[:-1]).sum()
    assert changed >= 20
    # (s_t, a_t) recorded before stepping: the recorded action moves s_t to s_{t+1}
    car = r.complete_cars()[0]
    t0, t1 = r.span(car)
    p, h, s = step_np(r.pos[t0:t1, car], r.heading[t0:t1, car], r.speed[t0:t1, car],
                      r.action[t0:t1, car], np.full(t1 - t0, r.size[car, 0]))
    np.testing.assert_allclose(p, r.pos[t0 + 1:t1 + 1, car], atol=1e-9)
    np.testing.assert_allclose(s, r.speed[t0 + 1:t1 + 1, car], atol=1e-9)


# -- rendering -------------------------------------------------------------------------
def test_views_show_cars_true_size_antialiased_and_ego_aligned() -> None:
    rng = np.random.default_rng(2)
    road, view = Road(), View(offroad=True)
    ego_p, ego_h = np.array([[100.0, 9.25]]), np.array([[1.0, 0.0]])
    areas = []
    for _ in range(30):
        size = np.array([[rng.uniform(4.3, 5.3), rng.uniform(1.8, 2.0)]])
        other = np.array([[100.0 + rng.uniform(8, 20), 9.25 + 3.7]])
        th = rng.uniform(-0.2, 0.2)
        img = render_views(ego_p, ego_h, size, other, np.array([[np.cos(th), np.sin(th)]]),
                           size, np.array([-1]), road, view)[0]
        areas.append(img[..., 1].sum() / 255 * view.res ** 2 / size.prod())
        rows, cols = np.nonzero(img[..., 1])
        assert rows.max() < view.height // 2  # ahead = upper half
        assert cols.max() < view.width // 2  # left (+y) = left half
        assert ((img[..., 1] > 0) & (img[..., 1] < 255)).any()  # anti-aliased edges
    assert abs(np.mean(areas) - 1.0) < 0.03
    b = img[..., 2]
    assert b[view.height // 2, view.width // 2] == 255 and b[0].max() == 0
    assert img[..., 3].max() == 0  # two lanes each side are still on the road
    edge = render_views(np.array([[100.0, 1.85]]), ego_h, np.array([[4.8, 1.9]]), other[:0],
                        ego_h[:0], size[:0], np.array([-1]), road, view)[0]
    assert edge[:, -1, 3].min() == 255  # the right-hand columns are off the road


# -- costs -----------------------------------------------------------------------------
def test_torch_and_numpy_costs_agree_on_frames(recording: Recording) -> None:
    r = recording
    t = 400
    cars = np.flatnonzero(r.valid[t])[:40]
    view = View(offroad=True)
    imgs = render_views(r.pos[t, cars], r.heading[t, cars], r.size[cars], r.pos[t], r.heading[t],
                        r.size, np.arange(r.cars)[cars], r.road, view)
    states = np.concatenate([r.pos[t, cars], r.heading[t, cars] * r.speed[t, cars, None]], 1)
    c_np = image_costs_np(imgs, states, view, sizes=r.size[cars], channels_last=True)
    x = torch.tensor(np.moveaxis(imgs, -1, 1) / 255.0, dtype=torch.float32, requires_grad=True)
    s = torch.tensor(states, dtype=torch.float32, requires_grad=True)
    c_t = image_costs_torch(x, s, view, sizes=torch.tensor(r.size[cars]))
    for key in ("proximity", "lane", "offroad", "collision", "total"):
        np.testing.assert_allclose(c_t[key].detach().numpy(), c_np[key], atol=1e-5)
    assert c_np["proximity"].max() > 0.1
    c_t["total"].sum().backward()
    assert x.grad.abs().sum() > 0
    assert s.grad is None or s.grad.abs().sum() == 0  # the speed is detached


def test_proximity_grows_as_a_car_closes_in_and_collision_on_contact() -> None:
    road, view, cfg = Road(), View(), CostConfig()
    ego_p, ego_h, size = np.array([[100.0, 9.25]]), np.array([[1.0, 0.0]]), np.array([[4.8, 1.9]])
    state = np.array([[100.0, 9.25, 8.0, 0.0]])
    prox, coll = [], []
    for gap in (20.0, 10.0, 5.0, 2.0, 0.5, -1.0):
        other = np.array([[100.0 + 4.8 + gap, 9.25]])
        img = render_views(ego_p, ego_h, size, other, ego_h, size, np.array([-1]), road, view)
        c = image_costs_np(img, state, view, cfg, size, channels_last=True)
        prox.append(c["proximity"][0])
        coll.append(c["collision"][0])
    assert np.all(np.diff(prox) > 0) and prox[0] < 0.05 and prox[-1] > 0.95
    assert max(coll[:-1]) < cfg.collision_threshold < coll[-1]
    # lane cost: zero when centred, positive on a marking
    lane = []
    for y in (9.25, 7.8):
        img = render_views(np.array([[100.0, y]]), ego_h, size, ego_p[:0], ego_h[:0], size[:0],
                           np.array([-1]), road, view)
        lane.append(image_costs_np(img, state, view, cfg, size, channels_last=True)["lane"][0])
    assert lane[0] == 0.0 and lane[1] > 0.3


def test_costs_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="images"):
        image_costs_torch(torch.zeros(2, 3, 10, 10), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="states"):
        image_costs_torch(torch.zeros(2, 3, 117, 24), torch.zeros(3, 4))


# -- replay and the gymnasium env -------------------------------------------------------
def test_replaying_recorded_actions_reproduces_the_car_and_succeeds(recording: Recording) -> None:
    r = recording
    cars = r.complete_cars()[:4]
    starts = np.array([r.span(c)[0] for c in cars])
    batch = ReplayBatch(r, cars, starts)
    for _ in range(600):
        if batch.done.all():
            break
        t = np.minimum(batch.ego.time, r.steps - 1)
        batch.step(r.action[t, cars])
    assert (batch.outcome == SUCCESS).all(), batch.outcome
    # doing nothing (constant speed) in stop-and-go traffic ends in collisions
    some = r.complete_cars()[4:16]
    lazy = ReplayBatch(r, some, np.array([r.span(c)[0] for c in some]))
    for _ in range(600):
        if lazy.done.all():
            break
        lazy.step(np.zeros((lazy.size, 2)))
    assert (lazy.outcome == COLLISION).mean() >= 0.5


def test_env_passes_gymnasium_checks_in_both_modes(recording: Recording) -> None:
    env = gym.make("worldplan/DenseTraffic-v0", warmup=20, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    assert env.unwrapped.task_model.state_dim == 4
    assert not isinstance(env.unwrapped.task_model, Dynamics)  # traffic: a model learns it
    rep = gym.make("worldplan/DenseTraffic-v0", mode="replay", recording=recording,
                   offroad_channel=True, render_mode="rgb_array")
    check_env(rep.unwrapped, skip_render_check=False)
    obs, info = rep.reset(seed=0)
    assert obs["image"].shape == (117, 24, 4) and np.allclose(obs["state"], info["state"])
    obs, reward, term, trunc, info = rep.step(np.zeros(2))
    assert {"outcome", "distance", "cost_proximity"} <= set(info) and reward <= 0
    assert rep.render().ndim == 3


def test_env_rejects_bad_input(recording: Recording) -> None:
    with pytest.raises(ValueError, match="mode"):
        gym.make("worldplan/DenseTraffic-v0", mode="warp")
    with pytest.raises(ValueError, match="recording"):
        gym.make("worldplan/DenseTraffic-v0", mode="replay")
    env = gym.make("worldplan/DenseTraffic-v0", mode="replay", recording=recording)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="ego_ids"):
        ReplayBatch(recording, np.array([recording.cars + 5]), np.array([0]))
