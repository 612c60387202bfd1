"""Particle filter: accuracy against the KF, resampling schemes, degeneracy, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from worldplan.filters import KalmanFilter, ParticleFilter
from worldplan.filters.particle import (
    ParticleDegeneracyError,
    ParticleDegeneracyWarning,
    multinomial_resample,
    residual_resample,
    stratified_resample,
    systematic_resample,
)

DT = 0.1
F = np.array([[1, 0, DT, 0], [0, 1, 0, DT], [0, 0, 1, 0], [0, 0, 0, 1.0]])
H = np.eye(2, 4)
G = np.array([[DT**2 / 2, 0], [0, DT**2 / 2], [DT, 0], [0, DT]])
Q = G @ G.T + 1e-4 * np.eye(4)
R = 0.05 * np.eye(2)


def cv_filters(**pf_kwargs):
    kf = KalmanFilter(F, H, Q, R, initial_state_mean=np.zeros(4),
                      initial_state_covariance=np.eye(4))
    ft, ht = torch.tensor(F), torch.tensor(H)
    pf = ParticleFilter(
        lambda x: x @ ft.T.to(x), lambda x: x @ ht.T.to(x), Q, R, np.zeros(4), np.eye(4),
        **pf_kwargs,
    )
    return kf, pf


def test_pf_rmse_within_5_percent_of_kf_with_10000_particles() -> None:
    kf, pf = cv_filters(n_particles=10_000, seed=1)
    x, z = kf.sample(60, n_tracks=2, seed=0)
    mk, _ = kf.filter(z)
    mp, cp = pf.filter(z)
    assert mp.shape == (2, 60, 4) and cp.shape == (2, 60, 4, 4)
    rmse_kf = np.sqrt(((mk - x) ** 2).sum(-1).mean())
    rmse_pf = np.sqrt(((mp - x) ** 2).sum(-1).mean())
    assert rmse_pf <= 1.05 * rmse_kf, (rmse_pf, rmse_kf)
    assert np.isfinite(pf.last_loglikelihood.numpy()).all()
    # the particle estimate of log p(z) is close to the exact one (Monte Carlo error)
    np.testing.assert_allclose(pf.last_loglikelihood.numpy(), kf.loglikelihood(z), atol=2.0)
    assert bool(pf.resampled.any()) and pf.ess.shape == (2, 60)


@pytest.mark.parametrize(
    "fn", [systematic_resample, stratified_resample, residual_resample, multinomial_resample]
)
def test_resamplers_are_unbiased(fn) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0], dtype=torch.float64)
    rows = 4000
    idx = fn(w.expand(rows, -1).contiguous(), gen)
    assert idx.shape == (rows, 6) and int(idx.min()) >= 0 and int(idx.max()) <= 4
    counts = torch.nn.functional.one_hot(idx, 6).sum(1).double()  # [rows, 6]
    np.testing.assert_allclose(counts.mean(0).numpy(), (6 * w).numpy(), atol=0.05)
    if fn in (systematic_resample, residual_resample):
        # low-variance schemes: every particle gets floor(N w) copies at least
        assert bool((counts >= torch.floor(6 * w)).all())


def test_missing_measurement_leaves_weights_alone_and_seed_reproduces() -> None:
    kf, pf = cv_filters(n_particles=500, seed=3, ess_threshold=0.0)
    _, z = kf.sample(5, seed=1)
    z[2] = np.nan
    pf.filter(z, keep_history=True)
    w = pf.weight_history[0]
    torch.testing.assert_close(w[2], w[1])
    m1, _ = pf.filter(z)
    m2, _ = pf.filter(z)
    np.testing.assert_array_equal(m1, m2)
    m3, _ = pf.filter(z, seed=4)
    assert not np.array_equal(m1, m3)


def test_all_weights_vanish_recovers_with_a_warning() -> None:
    def impossible(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ll = torch.zeros(p.shape[:2], dtype=p.dtype)
        ll[0] = -math.inf  # track 0: no particle explains the measurement
        ll[1, :] = -0.5 * p[1, :, 0] ** 2
        return ll

    z = np.zeros((2, 4, 1))
    for how, text in (("reset", "measurement ignored"), ("reinitialise", "initial")):
        pf = ParticleFilter(lambda x: x, Q=np.eye(1), x0=np.zeros(1), P0=np.eye(1),
                            n_particles=100, log_likelihood=impossible, on_degenerate=how)
        with pytest.warns(ParticleDegeneracyWarning, match=f"vanished.*tracks \\[0\\].*{text}"):
            m, c = pf.filter(z)
        assert np.isfinite(m).all() and np.isfinite(c).all()
        assert pf.degenerate_steps[0] == (0, [0])
    pf = ParticleFilter(lambda x: x, Q=np.eye(1), x0=np.zeros(1), P0=np.eye(1),
                        n_particles=100, log_likelihood=impossible, on_degenerate="raise")
    with pytest.raises(ParticleDegeneracyError, match="all particle weights vanished"):
        pf.filter(z)


def test_roughening_spreads_resampled_particles() -> None:
    def sharp(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((p[..., 0] - z[:, None, 0]) / 0.01) ** 2

    z = np.zeros((2, 1))
    common = {"Q": np.zeros((1, 1)), "x0": np.zeros(1), "P0": np.eye(1), "n_particles": 400,
              "log_likelihood": sharp, "ess_threshold": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = ParticleFilter(lambda x: x, **common)
        plain.filter(z, keep_history=True)
        rough = ParticleFilter(lambda x: x, roughening=0.5, **common)
        rough.filter(z, keep_history=True)
    n_plain = len(torch.unique(plain.particle_history[0, 1]))
    n_rough = len(torch.unique(rough.particle_history[0, 1]))
    assert n_rough > 2 * n_plain


def test_initial_particles_and_controls() -> None:
    init = np.random.default_rng(0).uniform(-1, 1, size=(300, 1))
    pf = ParticleFilter(lambda x, u: x + u, measure=lambda x: x, Q=np.eye(1) * 1e-6,
                        R=np.eye(1) * 1e-2, n_particles=300)
    z = np.array([[0.5], [np.nan], [np.nan]])
    m, _ = pf.filter(z, controls=np.array([[1.0], [1.0]]), initial_particles=init)
    assert abs(m[0, 0] - 0.5) < 0.05
    assert abs(m[2, 0] - 2.5) < 0.05


def test_bad_input() -> None:
    f = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="resampling must be one of"):
        ParticleFilter(f, f, np.eye(1), np.eye(1), np.zeros(1), np.eye(1), resampling="nope")
    with pytest.raises(ValueError, match="give either log_likelihood"):
        ParticleFilter(f, None, np.eye(1))
    with pytest.raises(ValueError, match="Q is not positive semi-definite"):
        ParticleFilter(f, f, -np.eye(1), np.eye(1))
    with pytest.raises(ValueError, match="on_degenerate"):
        ParticleFilter(f, f, np.eye(1), np.eye(1), on_degenerate="pray")
    pf = ParticleFilter(f, f, np.eye(1), np.eye(1), n_particles=10)
    with pytest.raises(ValueError, match="x0 and P0 are needed"):
        pf.filter(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="initial_particles must be"):
        pf.filter(np.zeros((3, 1)), initial_particles=np.zeros((5, 1)))
    with pytest.raises(ValueError, match="measurements contains inf"):
        pf.filter(np.full((3, 1), np.inf), initial_particles=np.zeros((10, 1)))


def test_nan_log_likelihood_counts_as_zero_weight() -> None:
    def some_nan(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ll = -0.5 * (p[..., 0] - z[:, None, 0]) ** 2
        return torch.where(p[..., 0] > 1.0, torch.full_like(ll, math.nan), ll)

    pf = ParticleFilter(lambda x: x, Q=np.eye(1) * 1e-6, x0=np.zeros(1), P0=np.eye(1),
                        n_particles=2000, log_likelihood=some_nan, ess_threshold=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no degeneracy: other particles carry the weight
        m, _ = pf.filter(np.zeros((1, 1)), keep_history=True)
    w = pf.weight_history[0, 0]
    parts = pf.particle_history[0, 0, :, 0]
    assert float(w[parts > 1.0].sum()) == 0.0
    assert np.isfinite(m).all() and m[0, 0] < 0.1


def test_estimates_are_the_weighted_moments_of_every_step() -> None:
    """The moments (computed in chunks of steps) equal the weighted mean and covariance of
    each step's particles, across chunk boundaries, with missing measurements."""
    kf, pf = cv_filters(n_particles=300, seed=2)
    _, z = kf.sample(75, n_tracks=3, seed=4)
    z[1, 40:45] = np.nan  # predict-only steps for one track
    m, c = pf.filter(z, keep_history=True)
    parts, w = pf.particle_history.numpy(), pf.weight_history.numpy()  # [B, T, N, S], [B, T, N]
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-9)
    mean = np.einsum("btn,btns->bts", w, parts)
    dev = parts - mean[:, :, None]
    cov = np.einsum("btn,btns,btnr->btsr", w, dev, dev)
    np.testing.assert_allclose(m, mean, atol=1e-9)
    np.testing.assert_allclose(c, cov, atol=1e-9)
