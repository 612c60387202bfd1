"""EKF and UKF: equal to the KF on linear-Gaussian models; batched; controls; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_filters_kalman import random_model

from worldplan.filters import ExtendedKalmanFilter, KalmanFilter, UnscentedKalmanFilter
from worldplan.filters.nonlinear import jacobian


def linear_case(seed: int = 0):
    p = random_model(seed, 4, 2)
    p["transition_offset"][:] = 0.0
    p["observation_offset"][:] = 0.0
    kf = KalmanFilter(**p)
    _, z = kf.sample(40, n_tracks=3, seed=seed + 1)
    z[1, 4] = np.nan
    z[2, 30:] = np.nan
    a = torch.tensor(p["transition_matrix"])
    h = torch.tensor(p["observation_matrix"])
    args = (
        lambda x: x @ a.T.to(x),
        lambda x: x @ h.T.to(x),
        p["transition_covariance"],
        p["observation_covariance"],
        p["initial_state_mean"],
        p["initial_state_covariance"],
    )
    return kf, z, args


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_equals_kalman_filter_on_linear_model(cls) -> None:
    kf, z, args = linear_case()
    ref_m, ref_c = kf.filter(z)
    flt = cls(*args)
    m, c = flt.filter(z)
    assert m.shape == (3, 40, 4) and c.shape == (3, 40, 4, 4)
    np.testing.assert_allclose(m, ref_m, atol=1e-8, rtol=0)
    np.testing.assert_allclose(c, ref_c, atol=1e-8, rtol=0)
    np.testing.assert_allclose(flt.last_loglikelihood.numpy(), kf.loglikelihood(z), atol=1e-8)
    single_m, _ = cls(*args).filter(z[0])
    np.testing.assert_allclose(single_m, ref_m[0], atol=1e-8, rtol=0)


def test_ukf_small_alpha_still_matches_on_linear_model() -> None:
    kf, z, args = linear_case(1)
    m, _ = UnscentedKalmanFilter(*args, alpha=1e-2, beta=2.0, kappa=0.0).filter(z)
    np.testing.assert_allclose(m, kf.filter(z)[0], atol=1e-7, rtol=0)


def test_controls_enter_the_transition() -> None:
    kf, z, args = linear_case(2)
    a = torch.tensor(kf.transition_matrix)
    u = np.random.default_rng(0).normal(size=(3, 39, 4))

    def f(x: torch.Tensor, uu: torch.Tensor) -> torch.Tensor:
        return x @ a.T + uu

    zz = z[:, :3].copy()
    zz[:, 1] = np.nan  # step 1 is prediction only: A m_0 + u_0
    m_first, _ = kf.filter(zz[:, :1])
    results = []
    for cls in (ExtendedKalmanFilter, UnscentedKalmanFilter):
        m, _ = cls(f, *args[1:]).filter(zz, controls=u[:, :2])
        expected = m_first[:, 0] @ kf.transition_matrix.T + u[:, 0]
        np.testing.assert_allclose(m[:, 1], expected, atol=1e-10)
        results.append(m)
    np.testing.assert_allclose(results[0], results[1], atol=1e-8)


def test_jacobian_of_a_batched_network() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net = net.double()
    x = torch.randn(5, 3, dtype=torch.float64)
    val, jac = jacobian(net, x)
    assert jac.shape == (5, 3, 3)
    ref = torch.stack([torch.autograd.functional.jacobian(net, x[i]) for i in range(5)])
    torch.testing.assert_close(jac, ref)
    torch.testing.assert_close(val, net(x))


def test_torch_float32_path() -> None:
    kf, z, args = linear_case(3)
    zt = torch.from_numpy(z).float()
    m, c = UnscentedKalmanFilter(*args[:2], *[torch.tensor(a).float() for a in args[2:]]).filter(
        zt
    )
    assert m.dtype == torch.float32 and m.shape == (3, 40, 4)
    np.testing.assert_allclose(m.numpy(), kf.filter(z)[0], atol=1e-3, rtol=1e-3)


def test_bad_input() -> None:
    _, z, args = linear_case(4)
    f, h, q, r, x0, p0 = args
    with pytest.raises(ValueError, match="Q is not symmetric"):
        ExtendedKalmanFilter(f, h, np.triu(np.ones((4, 4))), r, x0, p0)
    with pytest.raises(ValueError, match="P0 is not positive semi-definite"):
        UnscentedKalmanFilter(f, h, q, r, x0, -np.eye(4))
    with pytest.raises(ValueError, match="x0 must be"):
        ExtendedKalmanFilter(f, h, q, r, np.zeros(3), p0)
    with pytest.raises(TypeError, match="transition must be callable"):
        ExtendedKalmanFilter(None, h, q, r, x0, p0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="measure must map"):
        ExtendedKalmanFilter(f, lambda x: x, q, r, x0, p0).filter(z)
    with pytest.raises(ValueError, match="controls must have shape"):
        UnscentedKalmanFilter(f, h, q, r, x0, p0).filter(z, controls=np.zeros((3, 10, 1)))
    with pytest.raises(ValueError, match="measurements contains inf"):
        UnscentedKalmanFilter(f, h, q, r, x0, p0).filter(np.full((4, 2), np.inf))


def test_ekf_with_a_network_as_the_transition() -> None:
    """A learned world model (an nn.Module, float32) can be the process model."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def transition(x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * net(x)

    ekf = ExtendedKalmanFilter(transition, lambda x: x[:, :1], 0.01 * np.eye(2),
                               0.1 * np.eye(1), np.zeros(2), np.eye(2))
    z = torch.randn(4, 20, 1)
    m, c = ekf.filter(z)
    assert m.dtype == torch.float32 and m.shape == (4, 20, 2)
    assert torch.isfinite(m).all() and torch.isfinite(c).all()
    assert all(p.grad is None for p in net.parameters())  # filtering leaves the model alone
    ukf_m, _ = UnscentedKalmanFilter(transition, lambda x: x[:, :1], 0.01 * np.eye(2),
                                     0.1 * np.eye(1), np.zeros(2), np.eye(2)).filter(z)
    assert torch.isfinite(ukf_m).all()


def test_ukf_numpy_core_and_torch_loop_agree() -> None:
    """Few float64 CPU tracks run a numpy loop; more tracks run the batched torch loop."""
    p = random_model(6, 3, 2)
    kf = KalmanFilter(**{**p, "transition_offset": np.zeros(3), "observation_offset": np.zeros(2)})
    _, z = kf.sample(30, n_tracks=6, seed=2)
    z[4, 3] = np.nan
    a = torch.tensor(p["transition_matrix"])

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) @ a.T.to(x) + 0.5 * x

    def h(x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] ** 2 * 0.1 + x[:, 1:]

    args = (f, h, p["transition_covariance"], p["observation_covariance"],
            p["initial_state_mean"], p["initial_state_covariance"])
    many = UnscentedKalmanFilter(*args)
    m6, c6 = many.filter(z)  # torch loop
    few = UnscentedKalmanFilter(*args)
    m2, c2 = few.filter(z[3:5])  # numpy loop
    np.testing.assert_allclose(m2, m6[3:5], atol=1e-10)
    np.testing.assert_allclose(c2, c6[3:5], atol=1e-10)
    np.testing.assert_allclose(few.last_loglikelihood.numpy(),
                               many.last_loglikelihood.numpy()[3:5], atol=1e-9)


class _Unicycle:
    """A minimal TaskModel-shaped object: state [x, y, heading], action [speed, turn]."""

    state_dim, action_dim = 3, 2
    dt = 0.1

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        h = state[:, 2]
        return state + self.dt * torch.stack(
            [action[:, 0] * torch.cos(h), action[:, 0] * torch.sin(h), action[:, 1]], -1
        )

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.linalg.norm(state[:, :2], dim=-1),
                            torch.atan2(state[:, 1], state[:, 0])], -1)

    @property
    def process_noise(self) -> torch.Tensor:
        return torch.diag(torch.tensor([1e-4, 1e-4, 1e-4]))

    @property
    def measurement_noise(self) -> torch.Tensor:
        return torch.diag(torch.tensor([0.01, 1e-4]))


def test_filters_from_a_task_model_beat_the_raw_measurements() -> None:
    from worldplan.filters import ParticleFilter

    model = _Unicycle()
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([[3.0, 1.0, 0.5]])
    actions = torch.stack([torch.tensor([1.0, 0.3])] * 59)[:, None]  # [T-1, 1, 2]
    states = [x]
    for t in range(59):
        x = model.step(x, actions[t])
        states.append(x)
    truth = torch.cat(states)  # [T, 3]
    z = model.observe(truth) + torch.randn(60, 2, generator=gen) * torch.tensor([0.1, 0.01])
    x0, p0 = np.array([3.2, 0.9, 0.3]), np.diag([0.1, 0.1, 0.2])
    raw = (z[:, 0] - model.observe(truth)[:, 0]).abs().mean()
    for flt in (ExtendedKalmanFilter.from_task_model(model, x0, p0),
                UnscentedKalmanFilter.from_task_model(model, x0, p0),
                ParticleFilter.from_task_model(model, x0, p0, n_particles=2000)):
        means, _ = flt.filter(z, controls=actions[:, 0])
        assert means.dtype == torch.float32 and means.shape == (60, 3)
        est_range = model.observe(means)[:, 0]
        assert (est_range - model.observe(truth)[:, 0]).abs()[10:].mean() < raw
        assert (means[-20:, 2] - truth[-20:, 2]).abs().mean() < 0.1  # heading, unobserved


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_smoother_equals_rts_on_linear_model(cls) -> None:
    kf, z, args = linear_case(7)
    ref_m, ref_c = kf.smooth(z)
    m, c = cls(*args).smooth(z)
    np.testing.assert_allclose(m, ref_m, atol=1e-8, rtol=0)
    np.testing.assert_allclose(c, ref_c, atol=1e-8, rtol=0)
    single_m, _ = cls(*args).smooth(z[1])
    np.testing.assert_allclose(single_m, ref_m[1], atol=1e-8, rtol=0)


def test_nonlinear_smoother_beats_filter() -> None:
    model = _Unicycle()
    gen = torch.Generator().manual_seed(1)
    x = torch.tensor([[3.0, 1.0, 0.5]])
    actions = torch.stack([torch.tensor([1.0, 0.3])] * 39)[:, None]
    states = [x]
    for t in range(39):
        x = model.step(x, actions[t])
        states.append(x)
    truth = torch.cat(states)
    z = model.observe(truth) + torch.randn(40, 2, generator=gen) * torch.tensor([0.1, 0.01])
    x0, p0 = np.array([3.2, 0.9, 0.3]), np.diag([0.1, 0.1, 0.2])
    for cls in (ExtendedKalmanFilter, UnscentedKalmanFilter):
        flt = cls.from_task_model(model, x0, p0)
        fm, _ = flt.filter(z, controls=actions[:, 0])
        sm, sc = flt.smooth(z, controls=actions[:, 0])
        err_f = (fm - truth)[:, :2].norm(dim=-1).mean()
        err_s = (sm - truth)[:, :2].norm(dim=-1).mean()
        assert err_s < 0.8 * err_f, (cls.__name__, err_s, err_f)
        assert torch.equal(sc, sc.mT)
