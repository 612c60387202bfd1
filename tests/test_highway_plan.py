"""The highway's plan-aware world model (experiments/highway_plan.py) and the learners'
burn-in (planners/policy/mpur.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldplan.envs.highway import View
from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.experiments.highway_plan import (
    drive_references,
    ego_offsets,
    plan_world_fn,
    scene_rollout,
    unusual_actions,
)
from worldplan.experiments.highway_policy_net import ContextPolicy
from worldplan.planners.policy.mpur import burn_in, policy_rollout
from worldplan.worldmodels.ego_motion import EgoMotionImageModel
from worldplan.worldmodels.plan_uncertainty import PlanHeadEnsemble

VIEW = View()


def test_offsets_are_taken_in_the_reference_frame():
    # reference heading 90 deg (driving towards +y), speed 5; the ego 2 m ahead, 1 m to
    # its left (-x), 1 m/s faster, turned 0.1 rad to the left
    ref = torch.tensor([[10.0, 20.0, 0.0, 5.0]])
    h = math.pi / 2 + 0.1
    ego = torch.tensor([[10.0 - 1.0, 22.0, 6.0 * math.cos(h), 6.0 * math.sin(h)]])
    off = ego_offsets(ego, ref)[0]
    torch.testing.assert_close(off, torch.tensor([2.0, 1.0, 1.0, 0.1]), atol=1e-5, rtol=0)
    assert ego_offsets(ref, ref).abs().max() < 1e-6


def test_drives_are_matched_to_their_recorded_car():
    meta = {"kinds": ["recorded", "recorded", "drive", "drive"], "car_ids": [7, 9, 9, 3],
            "start_steps": [100, 40, 55, 10]}
    # drive 2 is car 9's (episode 1), starting 15 steps into it; car 3 was not recorded
    assert drive_references(meta) == {2: (1, 15)}


def _trunk() -> EgoMotionImageModel:
    torch.manual_seed(0)
    return EgoMotionImageModel(4, 2, (4, 117, 24), ncond=2, hidden=16, channels=(4, 4, 4),
                               z_dim=2, dropout=0.1, flow_prior="cost-volume").eval()


def _batch(b: int = 3, t: int = 4, k: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ctx = torch.zeros(b, k, 4)
    ctx[..., 0] = torch.arange(k) * 0.8
    ctx[..., 2] = 8.0
    frames = (torch.rand(b, k, 4, 117, 24, generator=g) > 0.9).to(torch.uint8) * 255
    acts = torch.zeros(b, t, 2)
    return {"context": ctx, "context_images": frames, "actions": acts}


def test_plan_world_follows_the_cached_scene_and_passes_gradients_to_the_plan():
    trunk, b = _trunk(), _batch()
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=3, width=4, prior_scale=0.0)
    model_fn, u_fn = plan_world_fn(trunk, head, VIEW, latent="zero")
    world = model_fn(b)
    # with zero heads and no prior the world is the trunk's scene warped into the ego's
    # pose: under the recorded actions, exactly the trunk's own rollout
    states, frames = scene_rollout(trunk, b["context"], b["context_images"], b["actions"],
                                   latent="zero")
    ctx = b["context"]
    for t in range(4):
        s, f = world.step(ctx, b["actions"][:, t])
        torch.testing.assert_close(s, states[:, t])
        torch.testing.assert_close(f[:, 1], frames[:, t, 1], atol=1e-4, rtol=0)
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
    var = u_fn(None, None, None, None)
    assert var.shape == (3, 4, 3) and var.abs().max() == 0  # identical members
    # the frames depend on the plan through the pose (the gradient reaches the actions)
    acts = torch.zeros(3, 4, 2, requires_grad=True)
    world = model_fn(b)
    ctx, total = b["context"], 0.0
    for t in range(4):
        s, f = world.step(ctx, acts[:, t])
        total = total + (f[:, 1] * torch.linspace(0, 1, 117)[:, None]).sum()
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
    total.backward()
    assert acts.grad[:, :, 0].abs().sum() > 0


def test_plan_world_variance_is_zero_only_where_members_agree():
    trunk, b = _trunk(), _batch()
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=3, width=4, prior_scale=1.0)
    model_fn, u_fn = plan_world_fn(trunk, head, VIEW)
    world = model_fn(b)
    ctx = b["context"]
    for t in range(3):
        s, _ = world.step(ctx, b["actions"][:, t])
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
    var = world.variances()
    assert var.shape == (3, 3, 3) and (var[..., 0] > 0).all()
    with pytest.raises(ValueError, match="latent"):
        scene_rollout(trunk, b["context"], b["context_images"], b["actions"], latent="x")


def test_unusual_actions_push_within_the_limits():
    acts = torch.zeros(50, 6, 2)
    odd = unusual_actions(acts, np.random.default_rng(0), accel=1.5, steer=0.004)
    assert torch.allclose(odd[..., 0].abs(), torch.full((50, 6), 1.5))
    assert torch.allclose(odd[..., 1].abs(), torch.full((50, 6), 0.004))
    assert (odd[:, 0, 0] > 0).any() and (odd[:, 0, 0] < 0).any()
    assert (odd == odd[:, :1]).all()  # one push per window


def test_burn_in_continues_the_context_through_the_model():
    torch.manual_seed(0)
    pol = ContextPolicy(4, 2, (4, 117, 24), 2, np.zeros(4), np.ones(4), np.zeros(2),
                        np.array([1.0, 0.01]), hidden=8, channels=(4, 4))
    b = _batch(b=2, t=6, k=2)
    tgt_states = torch.zeros(2, 6, 4)
    tgt_states[..., 0] = 1.6 + torch.arange(6) * 0.8
    tgt_states[..., 2] = 8.0
    tgt_images = torch.rand(2, 6, 4, 117, 24)

    def oracle() -> ReplayOracle:
        return ReplayOracle(tgt_images, tgt_states, VIEW.res)

    ctx, fr = burn_in(pol, oracle(), b["context"], b["context_images"], 3)
    states, images, _ = policy_rollout(pol, oracle(), b["context"],
                                       b["context_images"].float() / 255.0, 3)
    torch.testing.assert_close(ctx, states[:, -2:])
    torch.testing.assert_close(fr, images[:, -2:])
    assert not ctx.requires_grad
    ctx0, fr0 = burn_in(pol, oracle(), b["context"], b["context_images"], 0)
    assert ctx0 is b["context"] and fr0.dtype == torch.float32


def test_policy_options_are_checked_before_any_work():
    from worldplan.experiments.highway import default_config, validate_config

    for field, value, match in (("world", "dream", "policy.world"),
                                ("init_from", "dagger", "policy.init_from"),
                                ("oracle_burn_in", -1, "burn_in"),
                                ("u_source", "dream", "policy.u_source"),
                                ("scene_samples", 1, "policy.scene_samples"),
                                ("scene_cars", "all", "policy.scene_cars")):
        cfg = default_config()
        setattr(cfg.policy, field, value)
        with pytest.raises(ValueError, match=match):
            validate_config(cfg)
    validate_config(default_config())


def test_long_unroll_options_are_checked_before_any_work():
    from worldplan.experiments.highway import default_config, validate_config

    for npred, steps in ((-1, 600), (10, 0)):
        cfg = default_config()
        cfg.model.long_npred, cfg.model.long_steps = npred, steps
        with pytest.raises(ValueError, match="model.long_npred"):
            validate_config(cfg)


def test_learners_preset_trains_through_the_plan_aware_world():
    from worldplan.experiments.highway import TASK, validate_config

    cfg = TASK.presets["learners"]()
    validate_config(cfg)
    p = cfg.policy
    # the settings the docs' learner tables were measured with
    assert (p.world, p.proximity, p.ncond, p.horizon, p.burn_in) == (
        "plan-head", "front-rear", 10, 30, 30)
    assert p.lam > 0 and p.u_every == 1 and p.oracle_burn_in == 30
    assert p.u_source == "scene"  # the head's U hurt (docs/highway.md)
    assert "mpc" not in cfg.evaluate.methods and "mpur" in cfg.evaluate.methods
    assert cfg.collect == TASK.presets["default"]().collect  # the default data
    # the default models, the stochastic one trained on for 600 updates on 10-step unrolls
    default = TASK.presets["default"]().model
    assert (cfg.model.long_npred, cfg.model.long_steps) == (10, 600) and default.long_npred == 0
    default.long_npred = 10
    assert cfg.model == default


def test_scene_pool_caches_the_scene_the_world_would_roll_out():
    from worldplan.experiments.highway_plan import scene_pool

    trunk, b = _trunk(), _batch()

    def sample(rng, n):
        return {k: v[:n] for k, v in b.items()}

    draw = scene_pool(trunk, sample, np.random.default_rng(0), 3, latent="zero")
    pooled = draw(np.random.default_rng(1), 2)
    assert pooled["scene_frames"].dtype == torch.float16
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=2, width=4)
    model_fn, _ = plan_world_fn(trunk, head, VIEW, latent="zero")
    fresh = {k: v for k, v in pooled.items() if not k.startswith("scene_")}
    a, c = model_fn(pooled), model_fn(fresh)
    torch.testing.assert_close(a.scene_states, c.scene_states)
    torch.testing.assert_close(a.oracle.images, c.oracle.images, atol=2e-3, rtol=0)


def test_last_steps_hinge_scores_each_step_against_its_own_scene_step():
    from worldplan.experiments.highway_plan import LastSteps
    from worldplan.worldmodels.plan_uncertainty import ZScoreHinge

    # expert variances grow along the scene: step t has mean t and std 1 in every column
    expert = torch.arange(5.0)[None, :, None] + torch.tensor([-1.0, 1.0])[:, None, None]
    hinge = ZScoreHinge.fit(expert.expand(2, 5, 3).contiguous(), margin=0.0)
    u = torch.full((1, 5, 3), 4.0)  # 4.0 at every step
    last = LastSteps(hinge, 2)
    # the last two steps are scene steps 3 and 4: z = (4 - 3) / 1.414 and 0
    z3 = 1.0 / expert[:, 3, 0].std().item()
    torch.testing.assert_close(last.hinge(u), torch.tensor([[3 * z3, 0.0]]))
    with pytest.raises(ValueError, match="steps"):
        LastSteps(hinge, 0)


def test_plan_world_runs_its_head_only_where_its_variances_are_used():
    trunk, b = _trunk(), _batch()
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=3, width=4, prior_scale=1.0)
    frames = {}
    for mode, residual in (("always", False), ("with-grad", False), ("never", False),
                           ("always", True)):
        model_fn, _ = plan_world_fn(trunk, head, VIEW, latent="zero", uncertainty=mode,
                                    residual=residual)
        world = model_fn(b)
        ctx = b["context"]
        with torch.no_grad():  # a burn-in step
            s, f0 = world.step(ctx, b["actions"][:, 0])
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
        _, f1 = world.step(ctx, b["actions"][:, 1])
        frames[mode, residual] = f1
        if mode == "never":
            with pytest.raises(ValueError, match="without uncertainty"):
                world.variances()
            continue
        var = world.variances()
        assert var.shape == (3, 2, 3) and (var[:, 1, 0] > 0).all()
        # "with-grad" skips the head on the step taken without a graph
        assert (var[:, 0] == 0).all() == (mode == "with-grad")
    # the frame is the trunk's unless the members' mean residual is asked for
    torch.testing.assert_close(frames["always", False], frames["never", False])
    assert (frames["always", True] - frames["always", False]).abs().max() > 0
    with pytest.raises(ValueError, match="uncertainty"):
        plan_world_fn(trunk, head, VIEW, uncertainty="sometimes")[0](b)


def test_sparse_uncertainty_keeps_the_hinge_mean_of_the_measured_steps():
    from worldplan.experiments.highway_plan import LastSteps
    from worldplan.worldmodels.plan_uncertainty import ZScoreHinge

    hinge = ZScoreHinge(torch.zeros(6, 2), torch.ones(6, 2), margin=0.0)
    full = torch.full((1, 6, 2), 2.0)
    sparse = full.clone()
    sparse[:, [0, 1, 3, 4]] = 0.0  # measured at steps 2 and 5 (every 3rd)
    dense = LastSteps(hinge, 6).hinge(full)
    thin = LastSteps(hinge, 6, every=3).hinge(sparse)
    torch.testing.assert_close(thin.mean(), dense.mean())
    assert (thin[:, [0, 1, 3, 4]] == 0).all()

    trunk, b = _trunk(), _batch(t=6)
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=2, width=4)
    world = plan_world_fn(trunk, head, VIEW, uncertainty="with-grad", every=3)[0](b)
    ctx = b["context"]
    for t in range(6):
        s, _ = world.step(ctx, b["actions"][:, t])
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
    measured = (world.variances() != 0).any(-1).any(0)
    assert measured.tolist() == [False, False, True, False, False, True]


def _scene_world(samples: torch.Tensor, source: str = "scene", prior_scale: float = 1.0):
    from worldplan.experiments.highway_plan import PlanHeadWorld

    trunk, b = _trunk(), _batch()
    states, frames = scene_rollout(trunk, b["context"], b["context_images"], b["actions"],
                                   latent="zero")
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=3, width=4, prior_scale=prior_scale)
    return PlanHeadWorld(trunk, head, states, frames, VIEW, source=source,
                         samples=samples), b


def _variances(world, b, actions: torch.Tensor) -> torch.Tensor:
    ctx = b["context"]
    for t in range(actions.shape[1]):
        s, _ = world.step(ctx, actions[:, t])
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
    return world.variances()


def test_scene_uncertainty_sees_uncertain_cars_near_the_ego_not_the_offset():
    from worldplan.envs.highway.costs import masks_torch

    b0 = _batch()
    mask = masks_torch(b0["context"][:, -1], VIEW)["proximity"][0]  # [H, W], the ego's
    near, far = mask > 0.5, mask == 0
    assert near.any() and far.any()
    empty = torch.zeros(3, 3, 4, 1, 117, 24)
    # sampled scenes that disagree only far from the ego, or only close to it
    far_only, near_only = empty.clone(), empty.clone()
    far_only[:, 0, :, 0, far] = 1.0
    near_only[:, 0, :, 0, near] = 1.0
    rec, odd = b0["actions"], unusual_actions(b0["actions"], np.random.default_rng(0))
    for samples, acts, expect_zero in ((empty, odd, True), (far_only, rec, True),
                                       (near_only, rec, False)):
        world, b = _scene_world(samples)
        var = _variances(world, b, acts)
        assert var.shape == (3, 4, 2)
        if expect_zero:
            assert var.abs().max() < 1e-6
        else:
            assert (var[:, 0] > 0.1).all()  # both variances, from the first step
    # the head's spread grows with the offset from the recorded pose on the same empty road
    world, b = _scene_world(empty, source="head")
    assert (_variances(world, b, odd)[:, -1, 0] > 0).all()


def test_scene_uncertainty_passes_gradients_to_the_plan():
    samples = torch.zeros(3, 3, 4, 1, 117, 24)
    samples[:, 0, :, 0, 40:80] = 1.0  # one sample has cars ahead of and beside the ego
    world, b = _scene_world(samples)
    acts = torch.zeros(3, 4, 2, requires_grad=True)
    _variances(world, b, acts).sum().backward()
    assert acts.grad[:, :, 0].abs().sum() > 0


def test_scene_world_needs_no_head_and_refuses_head_only_uses():
    from worldplan.experiments.highway_plan import PlanHeadWorld

    samples = torch.zeros(3, 3, 4, 1, 117, 24)
    samples[:, 0, :, 0, 40:80] = 1.0
    with_head, b = _scene_world(samples)
    headless = PlanHeadWorld(with_head.trunk, None, with_head.scene_states,
                             with_head.oracle.images, VIEW, source="scene", samples=samples)
    acts = unusual_actions(b["actions"], np.random.default_rng(1))
    ctx = b["context"]
    for t in range(acts.shape[1]):
        s1, f1 = with_head.step(ctx, acts[:, t])
        s2, f2 = headless.step(ctx, acts[:, t])
        assert torch.equal(s1, s2) and torch.equal(f1, f2)
        ctx = torch.cat([ctx[:, 1:], s1[:, None]], 1)
    assert torch.equal(with_head.variances(), headless.variances())
    assert headless.variances()[:, :, 1].max() > 0
    for kwargs in ({"source": "head"}, {"source": "scene", "residual": True}):
        with pytest.raises(ValueError, match="needs the head ensemble"):
            PlanHeadWorld(with_head.trunk, None, with_head.scene_states, with_head.oracle.images,
                          VIEW, samples=samples, **kwargs)


def test_scene_samples_differ_and_leave_the_trunk_as_it_was():
    from worldplan.experiments.highway_plan import scene_pool, scene_samples

    trunk, b = _trunk(), _batch()
    cars = scene_samples(trunk, b["context"], b["context_images"], b["actions"], 3)
    assert cars.shape == (3, 3, 4, 1, 117, 24)
    assert (cars[:, 0] - cars[:, 1]).abs().max() > 0  # own latents and dropout masks
    assert not trunk.mc_dropout and not trunk.training
    with pytest.raises(ValueError, match="samples"):
        scene_samples(trunk, b["context"], b["context_images"], b["actions"], 1)

    def sample(rng, n):
        return {k: v[:n] for k, v in b.items()}

    pooled = scene_pool(trunk, sample, np.random.default_rng(0), 3, samples=2)(
        np.random.default_rng(1), 2)
    assert pooled["scene_samples"].shape == (2, 2, 4, 1, 117, 24)
    assert pooled["scene_samples"].dtype == torch.float16


def test_scene_envelope_holds_every_sampled_car_and_leaves_the_rest():
    from worldplan.experiments.highway_plan import scene_pool

    trunk, b = _trunk(), _batch()

    def sample(rng, n):
        return {k: v[:n] for k, v in b.items()}

    def pool(**kw):
        # the same generator state for both pools: the same prior scene and samples
        torch.manual_seed(3)
        return scene_pool(trunk, sample, np.random.default_rng(0), 3, **kw)(
            np.random.default_rng(1), 3)

    one, env = pool(samples=3), pool(samples=3, envelope=3)
    c = trunk.cars_channel
    cars, env_cars = one["scene_frames"][:, :, c:c + 1], env["scene_frames"][:, :, c:c + 1]
    # the pixelwise max of the prior scene and every sampled one (float16 storage)
    torch.testing.assert_close(env_cars, torch.maximum(cars, one["scene_samples"].amax(1)))
    assert (env_cars > cars).any()  # the samples add cars the single scene lacks
    others = [i for i in range(one["scene_frames"].shape[2]) if i != c]
    torch.testing.assert_close(env["scene_frames"][:, :, others],
                               one["scene_frames"][:, :, others])
    with pytest.raises(ValueError, match="envelope"):
        scene_pool(trunk, sample, np.random.default_rng(0), 3, envelope=1)


def _policy(ncond: int = 3) -> ContextPolicy:
    torch.manual_seed(1)
    return ContextPolicy(4, 2, (4, 117, 24), ncond, torch.zeros(4), torch.full((4,), 5.0),
                         torch.zeros(2), torch.tensor([1.0, 0.01]), hidden=16, channels=(4, 4),
                         history_channels=(1,))


def _world(kind: str, b: dict[str, torch.Tensor]):
    from worldplan.experiments.highway_shared import LastContext

    trunk = _trunk()
    if kind == "trunk":
        return LastContext(trunk)
    if kind == "oracle":
        return ReplayOracle(b["target_images"], b["targets"], VIEW.res)
    head = PlanHeadEnsemble(1, 4, [1.0, 0.5, 1.0, 0.02], k=3, width=4)
    source = kind.split("-")[1]
    model_fn, _ = plan_world_fn(trunk, head, VIEW, "zero", source=source, samples=2)
    return model_fn(b)


def _with_future(b: dict[str, torch.Tensor], t: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    n, k = b["context"].shape[:2]
    targets = torch.zeros(n, t, 4)
    targets[..., 0] = 0.8 * (k + torch.arange(t))
    targets[..., 2] = 8.0
    images = (torch.rand(n, t, 4, 117, 24, generator=g) > 0.9).to(torch.uint8) * 255
    return {**b, "targets": targets, "target_images": images}


@pytest.mark.parametrize("kind", ["trunk", "oracle", "plan-head", "plan-scene"])
def test_the_learners_drive_every_highway_world_through_the_model_state_contract(kind):
    """policy_rollout (policy_unroll and each world's ``advance``) gives what stepping the
    world by hand gives, and the cost's gradient reaches the policy."""
    b = _with_future(_batch())
    policy = _policy()
    z = torch.zeros(3, 4, 2) if kind == "trunk" else None
    states, frames, actions = policy_rollout(policy, _world(kind, b), b["context"],
                                             b["context_images"], 4, z)
    world, ctx = _world(kind, b), b["context"]
    fr = b["context_images"].float() / 255
    for t in range(4):
        a = policy(ctx, fr)
        if kind == "trunk":
            nxt = world.model.advance(world.model.reset(ctx[:, -2:], fr[:, -2:]), a, z[:, t])
            s, img = nxt.state, nxt.image
        else:
            s, img = world.step(ctx, a)
        torch.testing.assert_close(a, actions[:, t])
        torch.testing.assert_close(s, states[:, t])
        torch.testing.assert_close(img, frames[:, t])
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
        fr = torch.cat([fr[:, 1:], img[:, None]], 1)
    frames[:, :, 1].mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_mper_learns_through_a_model_with_a_shorter_context_than_the_policy():
    from worldplan.experiments.highway_shared import LastContext, posterior_fn
    from worldplan.planners.policy.mper import MPERConfig, train_mper

    b = _with_future(_batch(b=4))
    model, policy = LastContext(_trunk()), _policy(3)  # the model's context is 2 frames
    before = [p.detach().clone() for p in policy.parameters()]
    losses = train_mper(policy, model, lambda rng, n: b, posterior_fn(model), torch.ones(4),
                        MPERConfig(steps=2, batch_size=4, horizon=3, lr=1e-3),
                        np.random.default_rng(0), progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters(), strict=True))


def test_last_context_reads_the_models_latent_from_its_last_entries():
    """LastContext's posterior (what MPER infers) is the model's own on the last
    ``model.ncond`` entries of a longer policy context."""
    from worldplan.experiments.highway_shared import LastContext
    from worldplan.worldmodels.contract import ModelState

    b = _with_future(_batch())
    trunk = _trunk()
    wrapped = LastContext(trunk)
    fr = b["context_images"].float() / 255
    long = ModelState(b["context"], fr)  # 3 entries; the trunk's context is 2
    nxt = wrapped.advance(long, torch.zeros(3, 2), torch.zeros(3, 2))
    assert nxt.context.shape == (3, 3, 4)  # the long window moved on
    short = trunk.reset(b["context"][:, -2:], fr[:, -2:])
    z = wrapped.posterior(long, nxt.state, nxt.image)
    assert z.shape == (3, 2)
    assert torch.equal(z, trunk.posterior(short, nxt.state, nxt.image))
    assert torch.equal(z, wrapped.posterior(wrapped.reset(b["context"], fr), nxt.state,
                                            nxt.image))
