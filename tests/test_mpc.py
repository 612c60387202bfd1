"""planners/mpc: optimality on linear-quadratic problems, the adjoint, bounds, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from worldplan.planners.mpc import (
    CEM,
    ILQR,
    LQR,
    MPPI,
    GradientMPC,
    batch_jacobian,
    colored_noise,
    dare,
    dlqr,
)
from worldplan.planners.mpc import linearize as linearize_fn

torch.set_num_threads(1)

A = torch.tensor([[1.0, 0.1], [0.0, 1.0]])  # double integrator, dt = 0.1
B = torch.tensor([[0.005], [0.1]])
Q = torch.diag(torch.tensor([1.0, 0.5]))
R = torch.tensor([[0.1]])
X0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
T = 12


def linear(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return x @ A.T.to(x.dtype) + u @ B.T.to(x.dtype)


def quad(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return ((x @ Q.to(x.dtype)) * x).sum(-1) + ((u @ R.to(x.dtype)) * u).sum(-1)


def lq_optimum(x0: np.ndarray, horizon: int, p_term: np.ndarray | None = None
               ) -> tuple[np.ndarray, float]:
    """Unconstrained finite-horizon optimum by least squares: plan [T] and cost."""
    a, b, q, r = (m.numpy().astype(np.float64) for m in (A, B, Q, R))
    s = a.shape[0]
    phi = np.zeros(((horizon + 1) * s, s))
    gam = np.zeros(((horizon + 1) * s, horizon))
    phi[:s] = np.eye(s)
    for t in range(1, horizon + 1):
        phi[t * s:(t + 1) * s] = a @ phi[(t - 1) * s:t * s]
        gam[t * s:(t + 1) * s] = a @ gam[(t - 1) * s:t * s]
        gam[t * s:(t + 1) * s, t - 1:t] += b
    qb = np.kron(np.eye(horizon + 1), q)
    qb[horizon * s:, horizon * s:] = p_term if p_term is not None else 0.0
    h = gam.T @ qb @ gam + np.kron(np.eye(horizon), r)
    g = gam.T @ qb @ phi @ x0
    u = -np.linalg.solve(h, g)
    return u, float(u @ h @ u + 2 * g @ u + x0 @ phi.T @ qb @ phi @ x0)


PLANNERS = {
    "gradient-adam": lambda: GradientMPC(linear, quad, -10.0, 10.0, T, iterations=100, lr=0.3,
                                         bounds="clip"),
    "gradient-lbfgs": lambda: GradientMPC(linear, quad, -10.0, 10.0, T, iterations=40,
                                          lr=1.0, optimizer="lbfgs", bounds="clip"),
    "gradient-tanh": lambda: GradientMPC(linear, quad, -10.0, 10.0, T, iterations=200, lr=0.05),
    "cem": lambda: CEM(linear, quad, -10.0, 10.0, T, samples=400, elites=40, iterations=12,
                       init_std=0.2, seed=1),
    "icem": lambda: CEM(linear, quad, -10.0, 10.0, T, samples=300, elites=30, iterations=12,
                        init_std=0.2, beta=2.0, keep_elites=0.3, seed=1),
    "mppi": lambda: MPPI(linear, quad, -10.0, 10.0, T, samples=1000, temperature=0.01,
                         noise_sigma=0.5, iterations=10, seed=1),
    "ilqr": lambda: ILQR(linear, quad, -10.0, 10.0, T, iterations=3),
}
TOLERANCE = {"cem": 0.02, "icem": 0.02, "mppi": 0.05}  # relative excess cost allowed


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_planner_reaches_lq_optimum(name: str) -> None:
    planner = PLANNERS[name]()
    start = planner.objective(X0, planner._initial_plan(X0))
    plan = planner.plan(X0)
    cost = planner.objective(X0, plan).detach().numpy()
    best = np.array([lq_optimum(x.numpy().astype(np.float64), T)[1] for x in X0])
    assert (cost < start.detach().numpy()).all()
    assert (cost >= best - 1e-3 * best).all()  # nobody beats the analytic optimum
    np.testing.assert_allclose(cost, best, rtol=TOLERANCE.get(name, 1e-3))


def test_dlqr_matches_riccati_and_finite_horizon_first_action() -> None:
    k = dlqr(A, B, Q, R)
    assert isinstance(k, torch.Tensor) and k.shape == (1, 2)
    a, b, q, r = (m.numpy().astype(np.float64) for m in (A, B, Q, R))
    p = scipy.linalg.solve_discrete_are(a, b, q, r)
    # With the DARE solution as terminal cost, the finite-horizon optimum is u_0 = -K x_0.
    for x0 in X0.numpy().astype(np.float64):
        u, _ = lq_optimum(x0, T, p)
        np.testing.assert_allclose(u[0], -(k.numpy() @ x0)[0], rtol=1e-4, atol=1e-6)
    # closed loop is stable; numpy in -> numpy out
    assert np.abs(np.linalg.eigvals(a - b @ k.numpy().astype(np.float64))).max() < 1
    assert isinstance(dlqr(a, b, q, r), np.ndarray)


def test_dare_is_the_lqr_cost_to_go() -> None:
    p = dare(A, B, Q, R)
    assert isinstance(p, torch.Tensor) and p.shape == (2, 2)
    torch.testing.assert_close(p, p.T)
    k = dlqr(A, B, Q, R)
    # x0^T P x0 equals the cost of running u = -K x for a long time from x0
    x, total = X0.double(), torch.zeros(3, dtype=torch.float64)
    a, b, q, r, kd = (m.double() for m in (A, B, Q, R, k))
    for _ in range(2000):
        u = -x @ kd.T
        total += ((x @ q) * x).sum(-1) + ((u @ r) * u).sum(-1)
        x = x @ a.T + u @ b.T
    torch.testing.assert_close(((X0.double() @ p.double()) * X0.double()).sum(-1), total,
                               rtol=1e-4, atol=1e-6)
    # the LQ optimum with P as terminal cost costs exactly x0^T P x0 over any horizon
    for x0 in X0.numpy().astype(np.float64):
        _, best = lq_optimum(x0, T, p.numpy().astype(np.float64))
        np.testing.assert_allclose(best, x0 @ p.numpy() @ x0, rtol=1e-4)
    assert isinstance(dare(A.numpy(), B.numpy(), Q.numpy(), R.numpy()), np.ndarray)
    with pytest.raises(ValueError, match="R must"):
        dare(A, B, Q, torch.zeros(1, 1))


def test_lqr_planner_keeps_the_bounds() -> None:
    lqr = LQR(A, B, Q, R, -0.2, 0.3, horizon=4)
    big = torch.tensor([[50.0, 0.0], [-50.0, 0.0], [0.0, 0.0]])
    plan = lqr.plan(big)
    assert (plan >= -0.2).all() and (plan <= 0.3).all()
    torch.testing.assert_close(plan[:, 0, 0], torch.tensor([-0.2, 0.3, 0.0]))


def test_lqr_planner_and_ilqr_first_action_equal_dlqr_gain() -> None:
    k = dlqr(A, B, Q, R)
    lqr = LQR(A, B, Q, R, -10.0, 10.0, horizon=5)
    u = lqr.act(X0)
    torch.testing.assert_close(u, -X0 @ k.T, rtol=1e-5, atol=1e-6)
    mats = (m.double().numpy() for m in (A, B, Q, R))
    p = torch.as_tensor(scipy.linalg.solve_discrete_are(*mats), dtype=torch.float32)
    ilqr = ILQR(linear, quad, -10.0, 10.0, T, terminal_cost=lambda x: ((x @ p) * x).sum(-1),
                iterations=2)
    torch.testing.assert_close(ilqr.plan(X0)[:, 0], -X0 @ k.T, rtol=1e-3, atol=1e-4)


def test_gradient_equals_hand_adjoint() -> None:
    p_term = torch.tensor([[2.0, 0.3], [0.3, 1.0]])
    planner = GradientMPC(linear, quad, -10.0, 10.0, T,
                          terminal_cost=lambda x: ((x @ p_term.to(x.dtype)) * x).sum(-1))
    x0 = X0.double()
    u = torch.randn(3, T, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cost, grad = planner.gradient(x0, u)
    a, b, q, r, pt = (m.double() for m in (A, B, Q, R, p_term))
    xs = [x0]
    for t in range(T):
        xs.append(xs[-1] @ a.T + u[:, t] @ b.T)
    # backward recursion: lambda_T = dcT/dx_T; lambda_t = dc/dx_t + A^T lambda_{t+1};
    # dJ/du_t = dc/du_t + B^T lambda_{t+1}
    lam = 2 * xs[T] @ pt
    hand = torch.zeros_like(u)
    for t in reversed(range(T)):
        hand[:, t] = 2 * u[:, t] @ r + lam @ b
        lam = 2 * xs[t] @ q + lam @ a
    torch.testing.assert_close(grad, hand, rtol=1e-10, atol=1e-10)
    expected = sum(quad(xs[t], u[:, t]) for t in range(T)) + ((xs[T] @ pt) * xs[T]).sum(-1)
    torch.testing.assert_close(cost, expected)


def pendulum_like(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    th, om = x[:, 0], x[:, 1]
    om = om + 0.05 * (10 * torch.sin(th) + 4 * u[:, 0] + torch.tanh(u[:, 1]))
    return torch.stack([th + 0.05 * om, om], -1)


def far_goal(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] - 50.0) ** 2 - 100 * u.sum(-1)  # pushes every action past the bounds


@pytest.mark.parametrize("name", ["gradient-tanh", "gradient-clip", "gradient-lbfgs", "cem",
                                  "mppi", "ilqr", "gradient-z"])
def test_bounds_never_violated(name: str) -> None:
    low, high = torch.tensor([-0.5, -2.0]), torch.tensor([0.25, 3.0])
    common = dict(horizon=6, seed=3)
    make = {
        "gradient-tanh": lambda: GradientMPC(pendulum_like, far_goal, low, high, iterations=15,
                                             lr=1.0, restarts=3, **common),
        "gradient-clip": lambda: GradientMPC(pendulum_like, far_goal, low, high, iterations=15,
                                             lr=5.0, bounds="clip", **common),
        "gradient-lbfgs": lambda: GradientMPC(pendulum_like, far_goal, low, high, iterations=10,
                                              optimizer="lbfgs", bounds="clip", **common),
        "cem": lambda: CEM(pendulum_like, far_goal, low, high, samples=50, elites=5,
                           init_std=3.0, beta=1.0, keep_elites=0.5, **common),
        "mppi": lambda: MPPI(pendulum_like, far_goal, low, high, samples=50, noise_sigma=10.0,
                             iterations=3, **common),
        "ilqr": lambda: ILQR(pendulum_like, far_goal, low, high, iterations=4, **common),
        "gradient-z": lambda: GradientMPC(lambda x, u, z: pendulum_like(x, u) + z, far_goal,
                                          low, high, latent_dim=2, z_samples=3, iterations=5,
                                          lr=1.0, **common),
    }[name]
    planner = make()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        plan = planner.plan(x)
        assert plan.shape == (4, 6, 2)
        assert (plan >= low).all() and (plan <= high).all()
        act = planner.act(x)
        assert (act >= low).all() and (act <= high).all()
        x = pendulum_like(x, act)
    # the push past the bounds ends at (or next to) the upper bound
    assert (plan[..., 0] > high[0] - 0.1).float().mean() > 0.5


def test_warm_start_shift_and_reset() -> None:
    planner = MPPI(linear, quad, -1.0, 1.0, 5, samples=20, seed=0)
    assert planner.warm_start is None
    first = planner.plan(X0)
    torch.testing.assert_close(planner.warm_start, first)
    planner.reset()
    assert planner.warm_start is None
    plan = planner.plan(X0)
    act = planner.act(X0)
    kept = planner.warm_start
    assert kept.shape == plan.shape and act.shape == (3, 1)
    torch.testing.assert_close(kept[:, -1], kept[:, -2])
    # a different batch size starts cold instead of failing
    assert planner.act(X0[:1]).shape == (1, 1)
    # seeded: the same seed reproduces the same plan
    p1 = MPPI(linear, quad, -1.0, 1.0, 5, samples=20, seed=7).plan(X0)
    p2 = MPPI(linear, quad, -1.0, 1.0, 5, samples=20, seed=7).plan(X0)
    torch.testing.assert_close(p1, p2)


def test_plan_is_a_copy_and_act_honours_an_overridden_plan() -> None:
    """plan() hands out a copy (writing into it leaves the warm start alone); act() skips
    that copy but still calls a subclass's own plan()."""
    planner = MPPI(linear, quad, -1.0, 1.0, 5, samples=20, seed=0)
    plan = planner.plan(X0)
    kept = planner.warm_start.clone()
    plan.fill_(0.5)
    torch.testing.assert_close(planner.warm_start, kept)

    class Fixed(MPPI):
        def plan(self, state: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
            return torch.full((state.shape[0], self.horizon, 1), 0.25)

    fixed = Fixed(linear, quad, -1.0, 1.0, 5, samples=20)
    assert torch.equal(fixed.act(X0), torch.full((3, 1), 0.25))
    assert torch.equal(fixed.warm_start, torch.full((3, 5, 1), 0.25))


def test_latent_mean_and_min_reduce() -> None:
    def noisy(x: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return linear(x, u) + 0.3 * z

    plan = torch.zeros(3, T, 1)
    mean = GradientMPC(noisy, quad, -1.0, 1.0, T, latent_dim=2, z_samples=16, seed=0)
    low = GradientMPC(noisy, quad, -1.0, 1.0, T, latent_dim=2, z_samples=16, z_reduce="min",
                      seed=0)
    j_mean, j_min = mean.objective(X0, plan), low.objective(X0, plan)
    assert (j_min < j_mean).all()
    # the expected cost of noise is positive: above the noise-free cost
    assert (j_mean > GradientMPC(linear, quad, -1.0, 1.0, T).objective(X0, plan)).all()
    out = mean.plan(X0)
    assert out.shape == (3, T, 1) and torch.isfinite(out).all()


def test_uncertainty_penalty_keeps_plan_where_model_is_trusted() -> None:
    # reaching x0 = +2 is cheaper, but the model is untrusted for positive actions
    def dyn(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x + u

    def cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return -x[:, 0].clamp(0.0, 2.0) - 0.5 * (-x[:, 0]).clamp(0.0, 2.0)

    def unc(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.relu(u[:, 0]) * 10

    x = torch.zeros(2, 1)
    plain = CEM(dyn, cost, -1.0, 1.0, 4, samples=200, elites=20, seed=0).plan(x)
    careful = CEM(dyn, cost, -1.0, 1.0, 4, samples=200, elites=20, seed=0, uncertainty=unc,
                  uncertainty_weight=1.0).plan(x)
    assert plain.sum((1, 2)).min() > 1.0
    assert careful.sum((1, 2)).max() < -1.0


def test_colored_noise_unit_variance_and_smoothness() -> None:
    g = torch.Generator().manual_seed(0)
    white = colored_noise(0.0, (400, 2), 32, generator=g)
    red = colored_noise(2.5, (400, 2), 32, generator=g)
    assert white.shape == red.shape == (400, 32, 2)
    for noise in (white, red):
        assert abs(noise.var().item() - 1.0) < 0.1

    def lag1(x: torch.Tensor) -> float:
        return float((x[:, 1:] * x[:, :-1]).mean() / x.var())

    assert abs(lag1(white)) < 0.1 and lag1(red) > 0.6
    with pytest.raises(ValueError, match="beta"):
        colored_noise(-1.0, (2, 1), 5)


def test_batch_jacobian_and_linearize() -> None:
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    u = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    fa, fb = linearize_fn(pendulum_like, x, u)
    assert fa.shape == (5, 2, 2) and fb.shape == (5, 2, 2)
    for i in range(5):
        ja, jb = torch.autograd.functional.jacobian(
            lambda xx, uu: pendulum_like(xx[None], uu[None])[0], (x[i], u[i]))
        torch.testing.assert_close(fa[i], ja)
        torch.testing.assert_close(fb[i], jb)

    def not_functorch(v: torch.Tensor) -> torch.Tensor:  # .item() defeats torch.func
        scale = float(v.abs().max().item()) * 0 + 2.0
        return scale * v**2

    torch.testing.assert_close(batch_jacobian(not_functorch, x),
                               torch.diag_embed(4 * x))


# -- bad input ---------------------------------------------------------------------------
def test_bad_construction_arguments() -> None:
    with pytest.raises(ValueError, match="horizon"):
        CEM(linear, quad, -1.0, 1.0, 0)
    with pytest.raises(ValueError, match="action_low"):
        MPPI(linear, quad, torch.zeros(2, 2), torch.ones(2, 2), 5)
    with pytest.raises(ValueError, match="action_high"):
        GradientMPC(linear, quad, torch.zeros(2), torch.ones(3), 5)
    with pytest.raises(ValueError, match="below"):
        ILQR(linear, quad, 1.0, -1.0, 5)
    with pytest.raises(ValueError, match="finite"):
        CEM(linear, quad, float("nan"), 1.0, 5)
    with pytest.raises(TypeError, match="dynamics"):
        CEM("linear", quad, -1.0, 1.0, 5)
    with pytest.raises(ValueError, match="elites"):
        CEM(linear, quad, -1.0, 1.0, 5, samples=10, elites=20)
    with pytest.raises(ValueError, match="noise_sigma"):
        MPPI(linear, quad, -1.0, 1.0, 5, noise_sigma=torch.ones(3))
    with pytest.raises(ValueError, match="noise_sigma"):
        MPPI(linear, quad, -1.0, 1.0, 5, noise_sigma=-torch.eye(1))
    with pytest.raises(ValueError, match="optimizer"):
        GradientMPC(linear, quad, -1.0, 1.0, 5, optimizer="sgd")
    with pytest.raises(ValueError, match="uncertainty"):
        GradientMPC(linear, quad, -1.0, 1.0, 5, uncertainty_weight=1.0)
    with pytest.raises(ValueError, match="Q"):
        dlqr(A, B, torch.eye(3), R)


@pytest.mark.parametrize("cls", [GradientMPC, CEM, MPPI, ILQR])
def test_bad_callables_raise_at_first_call(cls: type) -> None:
    wrong_shape = cls(lambda x, u: x[:, :1], quad, -1.0, 1.0, 4)
    with pytest.raises(ValueError, match="dynamics returned shape"):
        wrong_shape.plan(X0)
    nan = cls(lambda x, u: x * float("nan"), quad, -1.0, 1.0, 4)
    with pytest.raises(ValueError, match="dynamics returned non-finite"):
        nan.plan(X0)
    bad_cost = cls(linear, lambda x, u: x, -1.0, 1.0, 4)
    with pytest.raises(ValueError, match="cost returned shape"):
        bad_cost.act(X0)
    bad_term = cls(linear, quad, -1.0, 1.0, 4, terminal_cost=lambda x: x.sum())
    with pytest.raises(ValueError, match="terminal_cost"):
        bad_term.plan(X0)
    crash = cls(lambda x, u: x @ torch.ones(5, 5), quad, -1.0, 1.0, 4)
    with pytest.raises(ValueError, match="dynamics failed"):
        crash.plan(X0)
    ok = cls(linear, quad, -1.0, 1.0, 4)
    with pytest.raises(ValueError, match="state"):
        ok.plan(torch.zeros(3))
    with pytest.raises(ValueError, match="state"):
        ok.plan(torch.full((2, 2), float("nan")))


@pytest.mark.parametrize("cls", [GradientMPC, CEM, MPPI, ILQR])
def test_nan_along_the_way_never_gives_a_nan_plan(cls: type) -> None:
    # finite at the validation point (u = 0) but NaN once |x| grows
    def fragile(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        nxt = linear(x, u) + u.abs() * 3
        return torch.where(nxt.abs() > 1.5, torch.full_like(nxt, float("nan")), nxt)

    planner = cls(fragile, quad, -1.0, 1.0, 6)
    try:
        plan = planner.plan(X0)
    except ValueError as exc:
        assert "non-finite" in str(exc)
    else:
        assert torch.isfinite(plan).all()


def test_float64_and_device_follow_the_state() -> None:
    planner = CEM(linear, quad, -1.0, 1.0, 4, samples=20, elites=4)
    plan = planner.plan(X0.double())
    assert plan.dtype == torch.float64 and plan.device == X0.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_plan() -> None:  # pragma: no cover - no GPU on the CI machine
    plan = MPPI(linear, quad, -1.0, 1.0, 4, samples=20).plan(X0.cuda())
    assert plan.is_cuda


@pytest.mark.slow
def test_compiled_rollout_matches_eager() -> None:
    eager = MPPI(linear, quad, -1.0, 1.0, 5, samples=64, seed=0)
    fused = MPPI(linear, quad, -1.0, 1.0, 5, samples=64, seed=0, compile=True)
    plan = torch.rand(3, 4, 5, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(fused.objective(X0, plan), eager.objective(X0, plan))
    torch.testing.assert_close(fused.plan(X0), eager.plan(X0))


@pytest.mark.parametrize(("cls", "field"), [
    (GradientMPC, "iterations"), (CEM, "iterations"), (CEM, "samples"), (MPPI, "samples"),
    (MPPI, "iterations"), (ILQR, "iterations"), (GradientMPC, "restarts")])
def test_counts_below_one_are_refused(cls: type, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cls(linear, quad, -1.0, 1.0, 4, **{field: 0})
    with pytest.raises(ValueError, match="horizon"):
        cls(linear, quad, -1.0, 1.0, -3)


class CountingDynamics:
    """``linear`` that counts its calls, to show that bad input fails before any work."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return linear(x, u)


@pytest.mark.parametrize("cls", [GradientMPC, CEM, MPPI, ILQR])
def test_warm_start_outside_the_bounds_is_refused_before_any_work(cls: type) -> None:
    dyn = CountingDynamics()
    planner = cls(dyn, quad, -1.0, 1.0, 4)
    outside = torch.zeros(len(X0), 4, 1)
    outside[1, 2, 0] = 1.5
    planner._validate(X0)  # the one-off output check of the callables
    calls = dyn.calls
    with pytest.raises(ValueError, match="outside the bounds"):
        planner.plan(X0, init=outside)
    with pytest.raises(ValueError, match="shape"):
        planner.act(X0, init=torch.zeros(len(X0), 5, 1))
    assert dyn.calls == calls
    inside = torch.full((len(X0), 4, 1), 0.25)
    plan = planner.plan(X0, init=inside)
    assert plan.shape == (len(X0), 4, 1) and dyn.calls > calls


def test_an_explicit_warm_start_is_where_the_optimiser_starts() -> None:
    # one Adam step of lr 1e-3 barely moves the plan: it must stay next to the given init
    planner = GradientMPC(linear, quad, -1.0, 1.0, 4, iterations=1, lr=1e-3, bounds="clip")
    init = torch.linspace(-0.5, 0.5, 4).reshape(1, 4, 1).repeat(len(X0), 1, 1)
    plan = planner.plan(X0, init=init)
    assert (plan - init).abs().max() < 5e-3


@pytest.mark.parametrize("cls", [GradientMPC, CEM, MPPI, ILQR])
def test_model_of_the_wrong_size_is_refused(cls: type) -> None:
    from worldplan.worldmodels.deterministic import DeterministicModel

    two_actions = DeterministicModel(2, 2, hidden=8, layers=1)
    with pytest.raises(ValueError, match="2-D actions"):
        cls(two_actions.step, quad, -1.0, 1.0, 4)
    model = DeterministicModel(3, 1, hidden=8, layers=1)
    with pytest.raises(ValueError, match="3-D states"):
        cls(model.step, quad, -1.0, 1.0, 4, state_dim=2)
    planner = cls(model.step, quad, -1.0, 1.0, 4)  # state size taken from the model
    with pytest.raises(ValueError, match="state_dim 3"):
        planner.plan(X0)


def test_wrapped_truck_emulator_size_is_checked() -> None:
    from worldplan.envs.truck import TruckTaskModel
    from worldplan.worldmodels.deterministic import DeterministicModel

    tm = TruckTaskModel()
    wrong = DeterministicModel(5, 1, hidden=8, layers=1)
    with pytest.raises(ValueError, match="5-D states"):
        GradientMPC(tm.stop_at_wall(wrong.step), tm.cost, tm.action_low, tm.action_high, 4,
                    state_dim=tm.state_dim)


def _pendulum_like(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A nonlinear, elementwise dynamics whose columns are read separately."""
    th = torch.atan2(x[:, 1], x[:, 0]) + 0.1 * u[:, 0]
    return torch.stack([torch.cos(th), torch.sin(th), x[:, 2] + 0.05 * u[:, 0]], dim=-1)


def _angle_cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return torch.atan2(x[:, 1], x[:, 0]) ** 2 + 0.1 * x[:, 2] ** 2 + 0.01 * u[:, 0] ** 2


@pytest.mark.parametrize("discount", [1.0, 0.9])
@pytest.mark.parametrize("grad", [False, True])
def test_fused_rollout_equals_the_step_by_step_loop(discount: float, grad: bool) -> None:
    """The column-major rollout with one batched cost call gives the reference loop's
    objective (and gradient), with and without autograd, discount and uncertainty."""
    planner = MPPI(_pendulum_like, _angle_cost, -2.0, 2.0, 7,
                   terminal_cost=lambda x: x[:, 2] ** 2,
                   uncertainty=lambda x, u: x[:, 0].abs() * u[:, 0] ** 2,
                   uncertainty_weight=0.3, discount=discount, samples=16)
    state = torch.tensor([[0.6, 0.8, 0.3], [-1.0, 0.0, -0.5]])
    planner._validate(state)
    assert planner._fused
    u = (torch.rand(2 * 5, 7, 1, generator=torch.Generator().manual_seed(0)) * 4 - 2)
    x = state[:, None].expand(2, 5, 3).reshape(10, 3)
    u.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        fused = planner._rollout_impl(x, u, None)
        loop = planner._rollout_loop(x, u, None)
        torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-5)
        if grad:
            g_fused, = torch.autograd.grad(fused.sum(), u)
            g_loop, = torch.autograd.grad(loop.sum(), u)
            torch.testing.assert_close(g_fused, g_loop, rtol=1e-4, atol=1e-5)


def test_callables_that_need_contiguous_rows_take_the_plain_loop() -> None:
    """A dynamics that calls .view on its input cannot take column-major views: the planner
    notices once, at validation, and plans exactly as with the reference loop."""
    def viewing(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return linear(x.view(-1).view(x.shape), u)

    state = X0[:2]
    planner = MPPI(viewing, quad, -1.0, 1.0, 5, samples=32, seed=3)
    plan = planner.plan(state)
    assert not planner._fused
    reference = MPPI(linear, quad, -1.0, 1.0, 5, samples=32, seed=3)
    torch.testing.assert_close(plan, reference.plan(state), rtol=1e-5, atol=1e-5)
    assert reference._fused


def test_cem_kept_elites_are_shifted_in_time() -> None:
    """The elites carried into the next control step are advanced by one step like the
    warm start (last step repeated), all of them: the best one is the kept plan itself."""
    planner = CEM(_pendulum_like, _angle_cost, -2.0, 2.0, 6, samples=64, elites=8,
                  iterations=1, keep_elites=0.5, seed=0)
    state = torch.tensor([[0.6, 0.8, 0.3], [-1.0, 0.0, -0.5]])
    planner.act(state)
    kept = planner._kept  # [B, 4, T, A]
    assert kept.shape == (2, 4, 6, 1)
    torch.testing.assert_close(kept[:, 0], planner.warm_start, rtol=0, atol=0)
    torch.testing.assert_close(kept[:, :, -1], kept[:, :, -2], rtol=0, atol=0)
    assert not torch.equal(kept[:, -1], kept[:, -2])  # four distinct elites


def _two_actions(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return torch.stack([0.9 * x[:, 0] + 0.1 * u[:, 0], x[:, 1] + 0.2 * u[:, 1] - 0.05 * u[:, 0]],
                       dim=-1)


def _two_action_cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (x**2).sum(-1) + 0.1 * (u**2).sum(-1)


@pytest.mark.parametrize(("sigma", "control_cost", "include_mean"), [
    (1.0, 1.0, True), (torch.tensor([0.5, 2.0]), 1.0, False),
    (torch.tensor([[1.0, 0.3], [0.3, 0.5]]), 0.5, True), (2.0, 0.0, True)])
def test_eager_mppi_update_equals_its_functional_form(sigma: object, control_cost: float,
                                                      include_mean: bool) -> None:
    """The buffered eager update gives the plan of the functional update (what
    torch.compile traces) on the same draws: noise shaping, clipping, control cost and
    weighting agree for scalar, diagonal and full covariances."""
    planner = MPPI(_two_actions, _two_action_cost, [-1.0, -2.0], [1.0, 0.5], 6, samples=64,
                   noise_sigma=sigma, control_cost=control_cost, include_mean=include_mean,
                   temperature=0.3, seed=4)
    state = X0[:, :2]
    init = torch.rand(3, 6, 2, generator=torch.Generator().manual_seed(0)) * 0.5 - 0.25
    with torch.no_grad():
        planner._validate(state)
        eager = planner._optimize_eager(state, init)
        white = torch.randn(3, 64, 6, 2, generator=torch.Generator().manual_seed(4))
        low, high = planner._bounds(state)
        chol, sigma_inv = planner._mats(state)[:2]
        reference = planner._update(state, init, white, low, high, chol, sigma_inv)
    assert planner._fast is not None  # the buffered rollout ran
    assert not torch.equal(reference, init)
    torch.testing.assert_close(eager, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [CEM, MPPI])
def test_fast_rollout_plans_like_the_general_rollout(cls: type) -> None:
    """Planning through the preallocated column buffers gives the plans of the general
    rollout (repeated rows, per-call layout), step after step with the warm start."""
    def make() -> CEM | MPPI:
        kw = {"elites": 8, "keep_elites": 0.5} if cls is CEM else {}
        return cls(_pendulum_like, _angle_cost, -2.0, 2.0, 7, samples=48, seed=2,
                   terminal_cost=lambda x: x[:, 2] ** 2, **kw)

    fast, general = make(), make()
    general._fast_rollout = lambda *args: None  # type: ignore[method-assign]
    x = torch.tensor([[0.6, 0.8, 0.3], [-1.0, 0.0, -0.5]])
    for _ in range(3):
        a_fast, a_general = fast.act(x), general.act(x)
        torch.testing.assert_close(a_fast, a_general, rtol=1e-6, atol=1e-6)
        x = _pendulum_like(x, a_fast)
    assert fast._fast is not None and general._fast is None


def test_mppi_compile_failure_plans_eagerly_with_the_same_draws(
        caplog: pytest.LogCaptureFixture) -> None:
    """When the compiled update fails, the call is planned eagerly from the same random
    draws: the plan is that of an eager planner with the same seed, and so are the next."""
    failing = MPPI(linear, quad, -1.0, 1.0, 5, samples=32, seed=3, compile=True)

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("no compiler here")

    failing._compiled_update = broken
    eager = MPPI(linear, quad, -1.0, 1.0, 5, samples=32, seed=3)
    for _ in range(2):
        assert torch.equal(failing.act(X0), eager.act(X0))
    assert not failing.compile and "running eagerly" in caplog.text


@pytest.mark.parametrize("cls", [CEM, MPPI])
def test_a_nan_cost_weighs_like_an_infinite_one(cls: type) -> None:
    """A sample whose cost is NaN counts as one of cost +inf (MPPI: weight zero; CEM: never
    an elite while a finite one is left), whether or not its plan would have won."""
    def cost_with(bad: float):
        def cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            c = quad(x, u)
            return torch.where(u[:, 0] > 0.3, torch.full_like(c, bad), c)
        return cost

    kw = {"elites": 6, "iterations": 2} if cls is CEM else {}
    nan_planner = cls(linear, cost_with(float("nan")), -1.0, 1.0, 5, samples=40, seed=3, **kw)
    inf_planner = cls(linear, cost_with(float("inf")), -1.0, 1.0, 5, samples=40, seed=3, **kw)
    plan_nan, plan_inf = nan_planner.plan(X0), inf_planner.plan(X0)
    assert torch.isfinite(plan_nan).all()
    torch.testing.assert_close(plan_nan, plan_inf, rtol=0, atol=0)
    if cls is MPPI:  # the masked samples mattered: without them the plan differs
        free = cls(linear, quad, -1.0, 1.0, 5, samples=40, seed=3).plan(X0)
        assert not torch.equal(free, plan_nan)


def _reference_cem(planner: CEM, state: torch.Tensor, mean: torch.Tensor,
                   kept: torch.Tensor | None, g: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CEM in its straightforward form (white noise, equal bounds): ``(best plan, kept
    elites)`` of one call from ``mean [B, T, A]``."""
    low, high = planner._bounds(state)
    b, t, a = mean.shape
    std = planner.init_std * (high - low) / 2 * torch.ones(b, t, a)
    n_keep = int(round(planner.keep_elites * planner.elites))
    best, best_cost = None, None
    for it in range(planner.iterations):
        sampled = torch.randn(b, planner.samples, t, a, generator=g) * std[:, None] + mean[:, None]
        if it == planner.iterations - 1:
            sampled[:, 0] = mean
        cand = sampled if kept is None else torch.cat([sampled, kept], 1)
        cand = cand.clamp(float(low[0]), float(high[0]))
        costs = planner.objective(state, cand)
        elite_cost, order = costs.topk(planner.elites, dim=1, largest=False)
        elite = torch.gather(cand, 1, order[..., None, None].expand(-1, -1, t, a))
        if best is None:
            best, best_cost = elite[:, 0], elite_cost[:, 0]
        else:
            better = elite_cost[:, 0] < best_cost
            best = torch.where(better[:, None, None], elite[:, 0], best)
            best_cost = torch.where(better, elite_cost[:, 0], best_cost)
        kept = elite[:, :n_keep]
        mean = planner.alpha * mean + (1 - planner.alpha) * elite.mean(1)
        std = planner.alpha * std + (1 - planner.alpha) * elite.std(1, unbiased=False)
    return best, kept


@pytest.mark.parametrize("iterations", [1, 3])
def test_cem_plans_are_those_of_the_straightforward_form_to_the_bit(iterations: int) -> None:
    """The buffered CEM (noise drawn at the initial std, candidates written in place, only
    the kept elites gathered on the last iteration) gives the plans of the plain form."""
    planner = CEM(_pendulum_like, _angle_cost, -2.0, 2.0, 6, samples=64, elites=8,
                  iterations=iterations, keep_elites=0.5, seed=5, alpha=0.2)
    g = torch.Generator().manual_seed(5)
    state = torch.tensor([[0.6, 0.8, 0.3], [-1.0, 0.0, -0.5]])
    mean, kept = torch.zeros(2, 6, 1), None
    for _ in range(3):
        action = planner.act(state)
        best, kept = _reference_cem(planner, state, mean, kept, g)
        torch.testing.assert_close(action, best[:, 0], rtol=0, atol=0)
        mean, kept = planner._shift(best), planner._shift(kept, dim=2)
        state = _pendulum_like(state, action)
