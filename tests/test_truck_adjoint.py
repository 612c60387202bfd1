"""experiments/truck_adjoint: the hand-written reverse pass equals autograd's."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from worldplan.envs.truck import StartRegion, TruckParams, TruckTaskModel
from worldplan.experiments.truck_adjoint import AdjointGradientMPC, TruckAdjoint, adjoint_model
from worldplan.experiments.truck_baselines import CascadeController
from worldplan.experiments.truck_mpc import (
    MPCConfig,
    TruckMPC,
    cascade_feedback,
    make_planner,
    policy_feedback,
)
from worldplan.planners.mpc import GradientMPC
from worldplan.worldmodels.deterministic import DeterministicModel

torch.set_num_threads(1)
# The steering limit rounded to float32, as the planner's bounds are: the cascade then
# saturates exactly on the bound, so a zero correction is a tie of torch.minimum (half the
# gradient), which the adjoint must reproduce.
P = TruckParams(dt=1.0, max_steps=150, max_steer=float(np.float32(math.radians(70.0))))
TM = TruckTaskModel(P)
AUTOGRAD = MPCConfig(gradient="autograd")
# Near the wall: most predictions reach it inside a 20-step horizon.
NEAR = StartRegion(rear_x=(3.0, 12.0))


def emulator(hidden: int, layers: int, seed: int) -> DeterministicModel:
    """A random emulator that backs toward the wall (delta mean -1 in x), float64."""
    torch.manual_seed(seed)
    m = DeterministicModel(4, 1, ncond=1, hidden=hidden, layers=layers, dropout=0.0)
    m.set_normalizer({"state_mean": [20, 0, 0, 0], "state_std": [10, 10, 1, 1],
                      "action_mean": [0.1], "action_std": [0.5],
                      "delta_mean": [-1, 0, 0, 0], "delta_std": [0.3, 0.3, 0.05, 0.05]})
    return m.double().eval()


def problem(b: int, seed: int, horizon: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``[b, 4]`` near the wall and corrections ``[b, T, 1]``: the first row zero
    (the cascade itself, which saturates on some steps: ties at the steering bound)."""
    rng = np.random.default_rng(seed)
    states = NEAR.sample(rng, b, P)
    states[0] = [8.0, 6.0, 1.4, 1.4]  # trailer 80 degrees off: the cascade saturates
    acts = rng.uniform(-0.4, 0.4, (b, horizon, 1))
    acts[0] = 0.0
    return torch.as_tensor(states), torch.as_tensor(acts)


def adjoint_for(dynamics, residual: bool) -> TruckAdjoint:
    cascade = CascadeController(P) if residual else None
    return TruckAdjoint(TM, adjoint_model(dynamics, TM), cascade, float(TM.action_low[0]),
                        float(TM.action_high[0]))


MODELS = [("emulator", 16, 1), ("emulator", 32, 2), ("emulator", 24, 3), ("kinematics", 0, 0)]


@pytest.mark.parametrize("kind,hidden,layers", MODELS)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("b", [1, 6])
def test_cost_and_gradient_equal_autograd(kind: str, hidden: int, layers: int,
                                          residual: bool, b: int) -> None:
    dynamics = emulator(hidden, layers, hidden + layers).step if kind == "emulator" else TM.step
    state, acts = problem(b, hidden + b)
    reference = make_planner("gradient", TM, dynamics, AUTOGRAD,
                             feedback=cascade_feedback(P) if residual else None)
    reference.horizon = acts.shape[1]
    assert isinstance(reference, GradientMPC)
    want_cost, want_grad = reference.gradient(state, acts)
    adj = adjoint_for(dynamics, residual)
    cost, grad = adj.cost_and_grad(state.numpy(), acts.numpy()[..., 0])
    np.testing.assert_allclose(cost, want_cost.numpy(), rtol=1e-10, atol=1e-10)
    scale = float(want_grad.abs().max())
    assert scale > 1e-3  # a gradient that could be wrong
    np.testing.assert_allclose(grad, want_grad.numpy()[..., 0], rtol=1e-8, atol=1e-10 * scale)
    np.testing.assert_allclose(adj.cost(state.numpy(), acts.numpy()[..., 0]), cost, rtol=1e-12)


def test_the_problems_reach_the_wall_mid_horizon_and_saturate_the_steering() -> None:
    """What the gradient test covers: predictions stopped at the wall part-way, and a
    zero correction on a saturated cascade (a tie at the steering bound)."""
    state, acts = problem(6, 40)
    adj = adjoint_for(emulator(32, 2, 34).step, residual=True)
    xs = adj.states(state.numpy(), acts.numpy()[..., 0])  # [B, T + 1, 4]
    rear = xs[..., 0] - P.trailer_length * np.cos(xs[..., 3])
    arrival = (rear <= 0).argmax(1)
    assert ((arrival > 0) & (arrival < acts.shape[1])).sum() >= 3
    held = xs[np.arange(6), arrival]
    np.testing.assert_array_equal(xs[np.arange(6), -1][arrival > 0], held[arrival > 0])
    phi = CascadeController(P)(torch.as_tensor(xs[0, :5]))
    assert bool((phi.abs() == P.max_steer).any())


def test_float32_equals_autograd_in_float32() -> None:
    """``TruckMPC`` plans in float32 (as autograd does): the adjoint then works in float32."""
    model = emulator(32, 2, 7).float()
    state, acts = problem(4, 8)
    state, acts = state.float(), acts.float()
    reference = make_planner("gradient", TM, model.step, AUTOGRAD, feedback=cascade_feedback(P))
    reference.horizon = acts.shape[1]
    want_cost, want_grad = reference.gradient(state, acts)
    cost, grad = adjoint_for(model.step, True).cost_and_grad(state.numpy(),
                                                             acts.numpy()[..., 0])
    assert cost.dtype == grad.dtype == np.float32
    np.testing.assert_allclose(cost, want_cost.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad.numpy()[..., 0], rtol=1e-3,
                               atol=1e-4 * float(want_grad.abs().max()))


@pytest.mark.parametrize("b", [1, 5])
def test_a_plan_equals_gradient_mpcs(b: int) -> None:
    """Three Adam steps and the best plan seen: the same plan as ``GradientMPC``'s."""
    model = emulator(32, 3, 11)
    state, acts = problem(b, 12)
    cfg = replace(MPCConfig(), first_iterations=3)
    fb = cascade_feedback(P)
    reference = make_planner("gradient", TM, model.step, replace(cfg, gradient="autograd"),
                             feedback=fb)
    planner = make_planner("gradient", TM, model.step, cfg, feedback=fb)
    assert isinstance(planner, AdjointGradientMPC)
    for p in (reference, planner):
        p.horizon = acts.shape[1]
    want = reference.plan(state, init=acts)
    got = planner.plan(state, init=acts)
    assert got.dtype == state.dtype and got.shape == want.shape
    assert float((got - acts).abs().max()) > 1e-3  # the plan moved
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(planner.last_costs, reference.last_costs.numpy(), rtol=1e-9)


def test_truck_mpc_steers_and_predicts_the_arrival_as_with_autograd() -> None:
    model = emulator(32, 2, 21).float()
    states = NEAR.sample(np.random.default_rng(22), 3, P)
    fb = cascade_feedback(P)
    ctrl = {}
    for gradient in ("adjoint", "autograd"):
        cfg = MPCConfig(gradient=gradient, horizon=30)
        planner = make_planner("gradient", TM, model.step, cfg, feedback=fb)
        ctrl[gradient] = TruckMPC(planner, TM, model.step, fb, cfg)
    steer = {g: c(states) for g, c in ctrl.items()}
    np.testing.assert_allclose(steer["adjoint"], steer["autograd"], atol=1e-4)
    assert ctrl["adjoint"].arrival == ctrl["autograd"].arrival < 30
    x = torch.as_tensor(states, dtype=torch.float32)
    plan = ctrl["autograd"].plan
    auto = ctrl["autograd"]._arrival(x, plan)
    assert ctrl["adjoint"]._arrival(x, plan) == auto
    assert isinstance(ctrl["adjoint"].planner, AdjointGradientMPC)


def test_bad_settings_and_unsupported_models_are_refused() -> None:
    with pytest.raises(ValueError, match="gradient must be 'adjoint' or 'autograd'"):
        MPCConfig(gradient="finite-differences")
    cfg = MPCConfig()
    cfg.gradient = "Adjoint"  # set after construction: checked again when planning
    with pytest.raises(ValueError, match="gradient must be"):
        make_planner("gradient", TM, TM.step, cfg, feedback=cascade_feedback(P))
    with pytest.raises(ValueError, match="dynamics: the adjoint supports"):
        make_planner("gradient", TM, lambda s, a: s, MPCConfig())
    two = DeterministicModel(4, 1, ncond=2, hidden=8, layers=1, dropout=0.0).eval()
    with pytest.raises(ValueError, match="ncond 1"):
        adjoint_model(two.step, TM)
    dropout = DeterministicModel(4, 1, hidden=8, layers=2, dropout=0.1)  # training mode
    with pytest.raises(ValueError, match="dropout is active"):
        adjoint_model(dropout.step, TM)
    odd = DeterministicModel(4, 1, hidden=8, layers=2, dropout=0.0).eval()
    odd.decoder[0] = torch.nn.Tanh()
    with pytest.raises(ValueError, match="Linear and ReLU layers, the decoder has a Tanh"):
        adjoint_model(odd.step, TM)
    adj = adjoint_for(TM.step, True)
    for kwargs, match in (({"horizon": 0}, "horizon"), ({"iterations": 0}, "iterations"),
                          ({"lr": -1.0}, "lr")):
        with pytest.raises(ValueError, match=match):
            AdjointGradientMPC(adj, TM.step, **{"horizon": 5, **kwargs})
    planner = AdjointGradientMPC(adj, TM.step, horizon=5)
    with pytest.raises(ValueError, match="init must have shape"):
        planner.plan(torch.zeros(2, 4), torch.zeros(2, 4, 1))


def test_a_learned_feedback_law_plans_through_autograd() -> None:
    policy = torch.nn.Sequential(torch.nn.Linear(4, 1))
    planner = make_planner("gradient", TM, TM.step, MPCConfig(),
                           feedback=policy_feedback(policy))
    assert isinstance(planner, GradientMPC)
    assert isinstance(make_planner("gradient", TM, TM.step, MPCConfig(),
                                   feedback=cascade_feedback(P)), AdjointGradientMPC)
