"""The world-model contract (worldmodels/contract.py), checked for every model kind with
every planner and the policy learner: each pair plans or trains a step, on the CPU and on
CUDA when present. A model that breaks the contract fails here."""

from __future__ import annotations

import pytest
import torch

from worldplan.planners.mpc import CEM, ILQR, MPPI, GradientMPC
from worldplan.planners.policy.closed_loop import policy_unroll
from worldplan.worldmodels import (
    DeterministicModel,
    EgoMotionImageModel,
    Ensemble,
    ImageModel,
    ModelState,
    StochasticModel,
    WorldModel,
)
from worldplan.worldmodels.uncertainty import mc_uncertainty

torch.set_num_threads(1)

S, A, IMG = 4, 2, (3, 16, 8)
KINDS = {
    "deterministic": lambda: DeterministicModel(S, A, hidden=16, dropout=0.1),
    "stochastic": lambda: StochasticModel(S, A, hidden=16, z_dim=2, dropout=0.1),
    "ensemble": lambda: Ensemble(S, A, k=3, hidden=16),
    "image": lambda: ImageModel(S, A, IMG, ncond=2, hidden=16, channels=(4, 8)),
    "image-cvae": lambda: ImageModel(S, A, IMG, ncond=2, hidden=16, channels=(4, 8), z_dim=2),
    "ego-motion": lambda: EgoMotionImageModel(S, A, IMG, ncond=2, hidden=16, channels=(4, 8),
                                              z_dim=2),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model(kind: str, device: str) -> WorldModel:
    torch.manual_seed(0)
    return KINDS[kind]().to(device).eval()


def _start(model: WorldModel, batch: int, device: str) -> ModelState:
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(batch, model.ncond, S, generator=g)
    ctx[..., 2] += 10.0  # moving forward (the ego-motion model's heading needs speed)
    frames = None
    if isinstance(model, ImageModel):
        frames = torch.rand(batch, model.ncond, *IMG, generator=g)
    return model.reset(ctx.to(device), None if frames is None else frames.to(device))


def cost(ms: ModelState, action: torch.Tensor) -> torch.Tensor:
    """Any cost of the model state: here the speed error, plus the cars' pixels in view."""
    c = (ms.state[:, 2] - 12.0) ** 2 + 0.1 * (action ** 2).sum(-1)
    if ms.image is not None:
        c = c + ms.image[:, 1].mean((1, 2))
    return c


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_reset_advance_unroll_agree(kind: str, device: str) -> None:
    model = _model(kind, device)
    ms = _start(model, 3, device)
    assert tuple(ms.shape) == (3, S) and ms.device.type == device
    actions = torch.randn(3, 4, A, device=device)
    z = model.sample_prior(3, 4).to(device) if model.z_dim else None
    traj = model.unroll(ms, actions, z)
    assert traj.states.shape == (3, 4, S)
    assert (traj.images is None) == (ms.frames is None)
    step = ms
    for t in range(4):
        step = model.advance(step, actions[:, t], None if z is None else z[:, t])
    torch.testing.assert_close(step.state, traj.states[:, -1])
    torch.testing.assert_close(traj.last.context, step.context)
    if traj.images is not None:
        assert traj.images.shape == (3, 4, *IMG)
        assert 0.0 <= float(traj.images.detach().min()) <= float(traj.images.detach().max()) <= 1
        torch.testing.assert_close(step.image, traj.images[:, -1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_contract_refuses_bad_input_in_one_line(kind: str) -> None:
    model = _model(kind, "cpu")
    ms = _start(model, 2, "cpu")
    with pytest.raises(ValueError, match=r"action must have shape \[2, 2\]"):
        model.advance(ms, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="ModelState"):
        model.advance(ms.state, torch.zeros(2, A))
    if isinstance(model, ImageModel):
        with pytest.raises(ValueError, match="needs frames"):
            model.reset(ms.context)
    else:
        with pytest.raises(ValueError, match="takes no frames"):
            model.reset(ms.context, torch.zeros(2, model.ncond, *IMG))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("planner_cls", [CEM, MPPI, GradientMPC, ILQR])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_planner_plans_through_every_model(kind: str, planner_cls: type,
                                                 device: str) -> None:
    model = _model(kind, device)
    ms = _start(model, 2, device)
    low, high = torch.tensor([-3.0, -0.2]), torch.tensor([3.0, 0.2])
    options = {"samples": 16, "iterations": 2} if planner_cls in (CEM, MPPI) else {
        "iterations": 2}
    if planner_cls is CEM:
        options["elites"] = 4
    planner = planner_cls(model.advance, cost, low, high, 3, latent_dim=model.z_dim,
                          **options)
    if planner_cls is ILQR:  # it linearises the dynamics: vector states only
        with pytest.raises(TypeError, match="needs vector states"):
            planner.plan(ms)
        vector = planner_cls(model.step, lambda x, u: (x[:, 2] - 12.0) ** 2, low, high, 3,
                             iterations=1) if not isinstance(model, ImageModel) else None
        if vector is not None and not model.z_dim:
            plan = vector.plan(ms.state)
            assert plan.shape == (2, 3, A) and torch.isfinite(plan).all()
        return
    plan = planner.plan(ms)
    assert plan.shape == (2, 3, A) and plan.device.type == device
    assert torch.isfinite(plan).all()
    assert ((plan >= low.to(device) - 1e-6) & (plan <= high.to(device) + 1e-6)).all()
    action = planner.act(ms)  # receding horizon keeps the shifted plan
    assert action.shape == (2, A) and planner.warm_start.shape == (2, 3, A)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_policy_learns_through_every_model(kind: str, device: str) -> None:
    """One backprop-through-time update through the model moves the policy's parameters,
    and a few lower the closed-loop cost from the same starts."""
    model = _model(kind, device)
    for p in model.parameters():
        p.requires_grad_(False)
    ms = _start(model, 8, device)
    torch.manual_seed(0)
    net = torch.nn.Linear(S, A).to(device)

    def policy(state: ModelState) -> torch.Tensor:
        return torch.tanh(net(state.state - state.state.detach().mean(0))) * torch.tensor(
            [3.0, 0.2], device=device)

    z = torch.zeros(8, 3, model.z_dim, device=device) if model.z_dim else None
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    for _ in range(15):
        traj, actions = policy_unroll(policy, model, ms, 3, z)
        loss = sum(cost(ModelState(traj.states[:, t:t + 1], None if traj.images is None
                                   else traj.images[:, t:t + 1]), actions[:, t])
                   for t in range(3)).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in net.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", ["stochastic", "image-cvae", "ego-motion"])
def test_a_cvae_posterior_explains_an_observed_step(kind: str) -> None:
    """MPER's replay of an expert: the public posterior gives one latent per step."""
    model = _model(kind, "cpu")
    ms = _start(model, 3, "cpu")
    nxt = model.advance(ms, torch.zeros(3, A), torch.zeros(3, model.z_dim))
    z = model.posterior(ms, nxt.state, nxt.image)
    assert z.shape == (3, model.z_dim) and torch.isfinite(z).all()


def test_a_model_without_a_latent_has_no_posterior() -> None:
    model = _model("deterministic", "cpu")
    ms = _start(model, 2, "cpu")
    with pytest.raises(TypeError, match="no latent"):
        model.posterior(ms, ms.state)


@pytest.mark.parametrize("kind", list(KINDS))
def test_mc_dropout_uncertainty_from_a_model_state(kind: str) -> None:
    """One uncertainty function for every kind: MC-dropout variance along a plan from a
    model state (a vector model's bare context gives the same shapes; an image model's
    is refused: it needs its frames)."""
    model = _model(kind, "cpu")
    ms = _start(model, 4, "cpu")
    plan = torch.zeros(4, 3, A)
    u = mc_uncertainty(model, ms, plan, n=6)
    assert u.mean.shape == (4, 3, S) and u.var.shape == (4, 3, S)
    assert (u.image_var is None) == (ms.frames is None)
    total = u.total(model)
    assert total.shape == (4, 3) and torch.isfinite(total).all() and (total >= 0).all()
    if isinstance(model, Ensemble):
        return  # no dropout layers: its disagreement is rollout_members'
    assert float(total.detach().sum()) > 0
    if ms.frames is None:  # a vector model also takes its bare context
        bare = mc_uncertainty(model, ms.context, plan, n=6,
                              generator=torch.Generator().manual_seed(0))
        assert bare.var.shape == u.var.shape
    else:  # an image model starts only from a model state that holds its frames
        with pytest.raises(ValueError, match="needs frames"):
            mc_uncertainty(model, ms.context, plan, n=6)


@pytest.mark.parametrize("kind", ["image-cvae", "ego-motion"])
def test_the_posterior_is_what_training_infers(kind: str) -> None:
    """The public posterior gives the latent the training loss encodes for the same step
    (the posterior mean, from the encoder of the context and of the target)."""
    model = _model(kind, "cpu")
    ms = _start(model, 3, "cpu")
    nxt = model.advance(ms, torch.zeros(3, A), torch.zeros(3, model.z_dim))
    feat = model.features(ms)
    target = torch.cat([model.target_encoder(nxt.image),
                        model.norm_delta(nxt.state - ms.state)], -1)
    mu = model.latent.posterior(torch.cat([feat, target], -1)).chunk(2, -1)[0]
    torch.testing.assert_close(model.posterior(ms, nxt.state, nxt.image), mu)
    with pytest.raises(TypeError, match="ModelState with frames"):
        model.features(model.reset)  # a state, not the call that makes one


# -- a plain dynamics callable as a model of the contract ------------------------------------
def _bare_rollout(policy, dynamics, start: torch.Tensor, horizon: int):
    """The loop BPTT through a dynamics callable ran before it went through policy_unroll."""
    states, actions, state = [start], [], start
    for _ in range(horizon):
        action = policy(state)
        state = dynamics(state, action)
        states.append(state)
        actions.append(action)
    return torch.stack(states, 1), torch.stack(actions, 1)


def test_bptt_through_a_dynamics_callable_is_the_bare_loop_bit_for_bit() -> None:
    """bptt.rollout is policy_unroll through DynamicsModel: the same states, actions and
    policy gradients as the bare loop, to the last bit (the truck's BPTT controller trains
    to the same numbers)."""
    from worldplan.planners.policy.bptt import MLPPolicy, rollout, trajectory_cost

    def dynamics(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return s + 0.1 * torch.tanh(s.flip(-1) * a.sum(-1, keepdim=True)) + 0.05 * a.mean(-1, True)

    def run_cost(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (s ** 2).sum(-1) + (a ** 2).sum(-1)

    torch.manual_seed(0)
    policy = MLPPolicy(S, A, -torch.ones(A), torch.ones(A), hidden=(16, 16))
    start = torch.randn(32, S, generator=torch.Generator().manual_seed(3))
    grads = []
    for loop in (_bare_rollout, rollout):
        policy.zero_grad()
        states, actions = loop(policy, dynamics, start, 12)
        loss = torch.log1p(trajectory_cost(states, actions, run_cost, None)).mean()
        loss.backward()
        grads.append((states, actions, [p.grad.clone() for p in policy.parameters()]))
    (s0, a0, g0), (s1, a1, g1) = grads
    assert s1.shape == (32, 13, S) and torch.equal(s1, s0) and torch.equal(a1, a0)
    assert all(torch.equal(x, y) for x, y in zip(g0, g1, strict=True))


def test_a_dynamics_model_keeps_the_contract() -> None:
    from worldplan.worldmodels.contract import DynamicsModel

    model = DynamicsModel(lambda s, a: 2 * s + a.sum(-1, keepdim=True))
    ms = model.reset(torch.ones(3, 2, S))  # a context window: the newest state is kept
    assert ms.context.shape == (3, 1, S) and ms.frames is None
    traj = model.unroll(ms, torch.ones(3, 2, A))
    assert torch.equal(traj.states[:, 0], torch.full((3, S), 4.0))  # 2 * 1 + 2
    assert torch.equal(traj.states[:, 1], torch.full((3, S), 10.0))  # 2 * 4 + 2
    assert torch.equal(traj.last.state, traj.states[:, 1])
    with pytest.raises(ValueError, match="no latent"):
        model.advance(ms, torch.ones(3, A), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="no frames"):
        model.reset(torch.ones(3, S), torch.ones(3, 1, *IMG))
    with pytest.raises(ValueError, match=r"\[B, S\] or \[B, ncond, S\]"):
        model.reset(torch.ones(S))
    with pytest.raises(TypeError, match="callable"):
        DynamicsModel(3)  # type: ignore[arg-type]
