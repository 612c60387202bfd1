"""The ego-motion image model: the warp re-projects rendered frames, the ego moves by the
kinematics, and the other cars do not react to the ego's actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldplan.envs.highway.kinematics import step_state_torch
from worldplan.envs.highway.render import View, render_views
from worldplan.envs.highway.road import Road
from worldplan.worldmodels.base import load_model
from worldplan.worldmodels.ego_motion import EgoMotionImageModel, warp_frames

VIEW = View()


def _scene(rng: np.random.Generator, n: int = 14) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.stack([rng.uniform(60, 140, n), (rng.integers(0, 6, n) + 0.5) * 3.7], 1)
    return pos, np.tile([1.0, 0.0], (n, 1)), np.tile([4.8, 1.9], (n, 1))


def _render(pos: np.ndarray, ang: float, scene) -> torch.Tensor:
    head = np.array([[np.cos(ang), np.sin(ang)]])
    img = render_views(pos[None], head, np.array([[4.8, 1.9]]), *scene, np.array([-1]), Road(),
                       VIEW)
    return torch.tensor(np.moveaxis(img, -1, 1), dtype=torch.float32) / 255.0


@pytest.mark.parametrize("move", [(1.3, 0.35, 0.03), (-2.0, -0.5, -0.05), (0.6, 0.0, 0.0)])
def test_warp_reprojects_a_rendered_scene(move: tuple[float, float, float]) -> None:
    scene = _scene(np.random.default_rng(0))
    a, b = np.array([100.0, 9.25]), np.array([100.0 + move[0], 9.25 + move[1]])
    ia, ib = _render(a, 0.0, scene), _render(b, move[2], scene)
    f32 = torch.float32
    out = warp_frames(ia, torch.tensor(a[None], dtype=f32), torch.tensor([[1.0, 0.0]]),
                      torch.tensor(b[None], dtype=f32),
                      torch.tensor([[np.cos(move[2]), np.sin(move[2])]], dtype=f32), VIEW.res)
    inner = (0, 1, slice(10, 107), slice(2, 22))  # the cars, away from the borders
    err, before = (out[inner] - ib[inner]).abs().mean(), (ia[inner] - ib[inner]).abs().mean()
    assert err < 0.3 * before
    assert abs(out[inner].sum() - ib[inner].sum()) < 0.05 * ib[inner].sum()
    # identity pose -> identity warp
    same = warp_frames(ia, torch.tensor(a[None], dtype=f32), torch.tensor([[1.0, 0.0]]),
                       torch.tensor(a[None], dtype=f32), torch.tensor([[1.0, 0.0]]), VIEW.res)
    torch.testing.assert_close(same, ia, atol=1e-5, rtol=0)


def _pure_warp_model(ncond: int = 2, z_dim: int = 0) -> EgoMotionImageModel:
    torch.manual_seed(0)
    m = EgoMotionImageModel(4, 2, (3, 117, 24), ncond=ncond, hidden=16, channels=(4, 4),
                            z_dim=z_dim, dropout=0.0)
    last = m.image_head.convs[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)  # the network predicts "nothing moves"
    return m.eval()


def test_braking_brings_the_car_behind_closer_by_the_exact_distance() -> None:
    scene = (np.array([[90.0, 9.25]]), np.array([[1.0, 0.0]]), np.array([[4.8, 1.9]]))
    m = _pure_warp_model()
    speed, dt = 6.0, 0.1
    ctx = torch.tensor([[[100.0 - speed * dt, 9.25, speed, 0.0], [100.0, 9.25, speed, 0.0]]])
    frames = torch.stack([_render(ctx[0, k, :2].numpy(), 0.0, scene)[0] for k in range(2)])[None]
    horizon = 15
    rows = torch.arange(117, dtype=torch.float32)
    centroid = {}
    for accel in (0.0, -2.0):
        actions = torch.tensor([[[accel, 0.0]]]).repeat(1, horizon, 1)
        traj = m.unroll(m.reset(ctx, frames), actions)
        states, imgs = traj.states, traj.images
        g = imgs[0, -1, 1].detach()
        centroid[accel] = float((g.sum(1) * rows).sum() / g.sum())
        expect = ctx[0, -1:]
        for t in range(horizon):
            expect = step_state_torch(expect, actions[0, t:t + 1], 4.8, dt)
        torch.testing.assert_close(states[0, -1], expect[0])
    # braking: the ego is behind where it would be, so the parked car appears closer
    # (rows grow backwards); the shift equals the distance lost, in pixels
    lost = 0.5 * 2.0 * ((horizon - 1) * dt) ** 2  # the last frame's pose lags by (T-1) steps
    assert centroid[-2.0] - centroid[0.0] == pytest.approx(-lost / VIEW.res, abs=0.25)


def test_other_cars_do_not_react_and_gradients_reach_the_actions(tmp_path) -> None:
    m = _pure_warp_model(z_dim=3)
    torch.nn.init.normal_(m.image_head.convs[-1].weight, std=0.05)  # a network that acts
    ctx = torch.tensor([[[99.4, 9.25, 6.0, 0.0], [100.0, 9.25, 6.0, 0.0]]]).repeat(2, 1, 1)
    frames = torch.rand(2, 2, 3, 117, 24)
    z = torch.randn(2, 4, 3)
    actions = torch.zeros(2, 4, 2, requires_grad=True)
    imgs = m.unroll(m.reset(ctx, frames), actions, z).images
    # the next frame does not depend on the acceleration taken now (position moves by the
    # current speed), the one after does
    g0 = torch.autograd.grad(imgs[:, 0, 1].sum(), actions, retain_graph=True)[0]
    g2 = torch.autograd.grad(imgs[:, 2, 1].sum(), actions)[0]
    assert g0[:, 0, 0].abs().max() < 1e-6 < 1e-3 < g2[:, 0, 0].abs().min()
    # checkpoint round trip keeps the class and the geometry
    from worldplan.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", m.to_checkpoint())
    back = load_model(tmp_path / "m.pt", torch.device("cpu"))
    assert isinstance(back, EgoMotionImageModel) and back.res == m.res
    with pytest.raises(ValueError, match="ego_channel"):
        EgoMotionImageModel(4, 2, (3, 117, 24), ego_channel=5)


def test_flow_prior_moves_the_other_cars_and_not_the_lanes() -> None:
    """With the flow at the ego's speed and no acceleration, a car in the cars channel
    keeps its place in the frames while the lane markings stream past."""
    speed, dt, horizon = 6.0, 0.1, 10
    m = EgoMotionImageModel(4, 2, (3, 117, 24), ncond=1, hidden=16, channels=(4, 4),
                            dropout=0.0, flow_speed=speed).eval()
    torch.nn.init.zeros_(m.image_head.convs[-1].weight)
    torch.nn.init.zeros_(m.image_head.convs[-1].bias)
    frame = torch.zeros(1, 3, 117, 24)
    frame[0, 1, 30:38, 8:12] = 1.0  # a car ahead
    frame[0, 0, 40:44, 2] = 1.0  # a dash of lane marking
    ctx = torch.tensor([[[100.0, 9.25, speed, 0.0]]])
    imgs = m.unroll(m.reset(ctx, frame[:, None]), torch.zeros(1, horizon, 2)).images
    rows = torch.arange(117, dtype=torch.float32)

    def centroid(img: torch.Tensor) -> float:
        return float((img.sum(1) * rows).sum() / img.sum())

    assert centroid(imgs[0, -1, 1].detach()) == pytest.approx(33.5, abs=0.2)
    moved = centroid(imgs[0, -1, 0].detach()) - 41.5
    assert moved == pytest.approx(speed * dt * horizon / VIEW.res, abs=0.5)


def test_block_matching_measures_a_cars_displacement() -> None:
    from worldplan.worldmodels.ego_motion import block_matching_flow, shift_rows

    prev = torch.zeros(1, 1, 117, 24)
    prev[0, 0, 50:58, 9:12] = 1.0
    shifts = torch.arange(-0.5, 3.75, 0.25)
    for true in (0.0, 0.7, 1.5, 2.6):
        cur = shift_rows(prev, torch.tensor([true]))[0]
        flow = block_matching_flow(prev, cur, shifts)[0, 0]
        on_car = cur[0, 0] > 0.5
        assert flow[on_car].mean() == pytest.approx(true, abs=0.1)


def test_cost_volume_prior_keeps_every_cars_own_velocity() -> None:
    """Three cars at 3, 6 and 9 m/s around an ego at 6 m/s: with the network's outputs
    zeroed, the cost-volume prior alone predicts where each one is 1 s later."""
    speeds = np.array([3.0, 6.0, 9.0])
    start = np.array([[96.0, 5.55], [112.0, 9.25], [85.0, 12.95]])
    dt, horizon, v_ego = 0.1, 10, 6.0

    def frame(t: int) -> torch.Tensor:
        pos = start + np.outer(speeds, [1.0, 0.0]) * t * dt
        scene = (pos, np.tile([1.0, 0.0], (3, 1)), np.tile([4.8, 1.9], (3, 1)))
        return _render(np.array([100.0 + v_ego * t * dt, 9.25]), 0.0, scene)[0]

    m = EgoMotionImageModel(4, 2, (3, 117, 24), ncond=2, hidden=16, channels=(4, 4),
                            dropout=0.0, flow_prior="cost-volume").eval()
    torch.nn.init.zeros_(m.image_head.convs[-1].weight)
    torch.nn.init.zeros_(m.image_head.convs[-1].bias)
    ctx = torch.tensor([[[100.0 + v_ego * t * dt, 9.25, v_ego, 0.0] for t in (0, 1)]])
    frames = torch.stack([frame(0), frame(1)])[None]
    with torch.no_grad():
        imgs = m.unroll(m.reset(ctx, frames), torch.zeros(1, horizon, 2)).images
    pred, true = imgs[0, -1, 1], frame(1 + horizon)[1]
    rows = torch.arange(117, dtype=torch.float32)

    def centroid(img: torch.Tensor, cols: slice) -> float:
        band = img[:, cols].sum(1)
        return float((band * rows).sum() / band.sum())

    for cols in (slice(14, 20), slice(9, 15), slice(3, 9)):  # lanes right, own, left
        # within 0.8 px (0.5 m) after 1 s; relative motions are +-4.9 px
        assert centroid(pred, cols) == pytest.approx(centroid(true, cols), abs=0.8)
    with pytest.raises(ValueError, match="ncond >= 2"):
        EgoMotionImageModel(4, 2, (3, 117, 24), ncond=1, flow_prior="cost-volume")
    with pytest.raises(ValueError, match="flow_prior"):
        EgoMotionImageModel(4, 2, (3, 117, 24), flow_prior="optical")


def test_policy_sees_each_cars_speed_relative_to_the_ego() -> None:
    from worldplan.experiments.highway_policy_net import ContextPolicy

    speeds, v_ego, dt = np.array([3.0, 9.0]), 6.0, 0.1
    start = np.array([[96.0, 5.55], [112.0, 9.25]])

    def frame(t: int) -> torch.Tensor:
        pos = start + np.outer(speeds, [1.0, 0.0]) * t * dt
        scene = (pos, np.tile([1.0, 0.0], (2, 1)), np.tile([4.8, 1.9], (2, 1)))
        return _render(np.array([100.0 + v_ego * t * dt, 9.25]), 0.0, scene)[0]

    motion = {"channel": 1, "res": VIEW.res, "dt": dt, "min_speed": 0.2, "max_speed": 20.0}
    pol = ContextPolicy(4, 2, (3, 117, 24), 2, np.zeros(4), np.ones(4), np.zeros(2),
                        np.ones(2), hidden=16, channels=(4, 4), motion=motion)
    states = torch.tensor([[[100.0 + v_ego * t * dt, 9.25, v_ego, 0.0] for t in (0, 1)]])
    frames = torch.stack([frame(0), frame(1)])[None]
    rel = pol._relative_speed(states, frames)[0, 0] * 5.0  # m/s where the cars are
    cars = frames[0, -1, 1]
    for cols, expect in ((slice(14, 20), -3.0), (slice(9, 15), 3.0)):  # right lane, own
        on = cars[:, cols] > 0.9
        got = float(rel[:, cols][on].mean() / cars[:, cols][on].mean())
        assert got == pytest.approx(expect, abs=0.5)
    assert pol(states, frames).shape == (1, 2)
    assert pol.config()["motion"]["channel"] == 1.0
    with pytest.raises(ValueError, match="ncond >= 2"):
        ContextPolicy(4, 2, (3, 117, 24), 1, np.zeros(4), np.ones(4), np.zeros(2), np.ones(2),
                      motion=motion)
