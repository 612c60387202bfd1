"""Gradient MPC with the scene cache: fewer model rollouts per plan, the same plans' cost."""

from __future__ import annotations

import pytest
import torch

from worldplan.envs.highway import View
from worldplan.experiments.highway import cost_fn, u_map
from worldplan.experiments.highway_mpc import SceneCacheMPC
from worldplan.worldmodels.ego_motion import EgoMotionImageModel


def _context(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.zeros(b, 2, 4, 117, 24)
    frames[:, :, 0, :, ::6] = 1.0  # lane markings
    frames[:, :, 2, 55:62, 10:14] = 1.0  # the ego
    for i in range(b):  # a car ahead, closing in by a pixel per frame
        r = int(torch.randint(30, 45, (1,), generator=g))
        frames[i, 0, 1, r:r + 8, 10:14] = 1.0
        frames[i, 1, 1, r + 1:r + 9, 10:14] = 1.0
    states = torch.tensor([[0.0, 5.5, 6.0, 0.0], [0.6, 5.5, 6.0, 0.0]]).expand(b, 2, 4).clone()
    return states, frames


@pytest.mark.parametrize("cache", [True, False])
def test_scene_cache_runs_the_model_once_per_plan(cache: bool) -> None:
    torch.manual_seed(0)
    model = EgoMotionImageModel(4, 2, (4, 117, 24), ncond=2, z_dim=4, hidden=32,
                                channels=(4, 8, 8), flow_prior="cost-volume", dropout=0.1).eval()
    calls = []
    full_unroll = model.unroll  # every rollout of the model (rollout, MC dropout) runs it

    def counting(*args, **kwargs):  # the model's rollouts are the expensive part
        calls.append(1)
        return full_unroll(*args, **kwargs)

    model.unroll = counting
    view = View(offroad=True)
    planner = SceneCacheMPC(model, cost_fn(view, 0.2), u_map(view), torch.tensor([-3.0, -0.01]),
                            torch.tensor([3.0, 0.01]), horizon=3, iterations=3, lr=0.1,
                            u_weight=0.1, mc_samples=2, cache=cache)
    states, frames = _context()
    a = planner.act(states, frames)
    assert a.shape == (2, 2) and torch.isfinite(a).all()
    # cached: one mean rollout and one batched MC-dropout rollout per plan; full: per iteration
    assert len(calls) == (2 if cache else 6)


def test_cached_and_full_plans_cost_the_same_under_the_full_model() -> None:
    torch.manual_seed(1)
    model = EgoMotionImageModel(4, 2, (4, 117, 24), ncond=2, z_dim=4, hidden=32,
                                channels=(4, 8, 8), flow_prior="cost-volume").eval()
    view = View(offroad=True)
    states, frames = _context()
    costs = {}
    for cache in (True, False):
        planner = SceneCacheMPC(model, cost_fn(view, 0.2), None, torch.tensor([-3.0, -0.01]),
                                torch.tensor([3.0, 0.01]), horizon=4, iterations=6, lr=0.2,
                                u_weight=0.0, mc_samples=2, cache=cache)
        first = planner.act(states, frames)
        assert torch.equal(planner.chosen[:, 0], first)  # the plan whose first action it took
        assert torch.equal(planner.plan[:, :-1], planner.chosen[:, 1:])  # the next warm start
        costs[cache] = planner.plan_cost(states, frames, planner.chosen)
        costs["start"] = planner.plan_cost(states, frames, torch.zeros(2, 4, 2))
    # both lower the true cost from the warm start, by about as much
    for cache in (True, False):
        assert (costs[cache] <= costs["start"] + 1e-4).all()
    assert torch.allclose(costs[True], costs[False], rtol=0.05, atol=0.02)
