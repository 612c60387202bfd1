"""KalmanFilter against pykalman (float64, 1e-8), batching, EM, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pykalman import KalmanFilter as PyKalman

from worldplan.filters import KalmanFilter


def random_model(seed: int, s: int = 3, m: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(s, s))
    a *= 0.95 / max(abs(np.linalg.eigvals(a)))

    def spd(n: int) -> np.ndarray:
        x = rng.normal(size=(n, n))
        return x @ x.T / n + 0.1 * np.eye(n)

    return {
        "transition_matrix": a,
        "observation_matrix": rng.normal(size=(m, s)),
        "transition_covariance": spd(s),
        "observation_covariance": spd(m),
        "transition_offset": rng.normal(size=s),
        "observation_offset": rng.normal(size=m),
        "initial_state_mean": rng.normal(size=s),
        "initial_state_covariance": spd(s),
    }


def pykalman_of(p: dict[str, np.ndarray]) -> PyKalman:
    return PyKalman(
        transition_matrices=p["transition_matrix"],
        observation_matrices=p["observation_matrix"],
        transition_covariance=p["transition_covariance"],
        observation_covariance=p["observation_covariance"],
        transition_offsets=p["transition_offset"],
        observation_offsets=p["observation_offset"],
        initial_state_mean=p["initial_state_mean"],
        initial_state_covariance=p["initial_state_covariance"],
    )


@pytest.mark.parametrize("seed,s,m", [(0, 3, 2), (1, 4, 2), (2, 2, 3), (3, 1, 1)])
def test_single_track_matches_pykalman(seed: int, s: int, m: int) -> None:
    p = random_model(seed, s, m)
    kf = KalmanFilter(**p)
    _, z = kf.sample(60, seed=seed)
    z[[4, 20, 21]] = np.nan
    z[33, 0] = np.nan  # a partly missing row is skipped whole, as in pykalman
    ref = pykalman_of(p)
    zm = np.ma.masked_invalid(z)
    for ours, theirs in ((kf.filter(z), ref.filter(zm)), (kf.smooth(z), ref.smooth(zm))):
        assert ours[0].shape == (60, s) and ours[1].shape == (60, s, s)
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-8, rtol=0)
        np.testing.assert_allclose(ours[1], theirs[1], atol=1e-8, rtol=0)
    assert abs(kf.loglikelihood(z) - ref.loglikelihood(zm)) < 1e-8


def test_batched_matches_track_by_track() -> None:
    p = random_model(5, 4, 2)
    kf = KalmanFilter(**p)
    _, z = kf.sample(40, n_tracks=4, seed=9)
    z[1, 7] = np.nan  # different missing patterns: per-track covariances
    z[2, 30:] = np.nan  # a short track padded with NaN rows
    ref = pykalman_of(p)
    fm, fc = kf.filter(z)
    sm, sc = kf.smooth(z)
    ll = kf.loglikelihood(z)
    assert fm.shape == (4, 40, 4) and sc.shape == (4, 40, 4, 4) and ll.shape == (4,)
    for b in range(4):
        zm = np.ma.masked_invalid(z[b])
        rf, rs = ref.filter(zm), ref.smooth(zm)
        np.testing.assert_allclose(fm[b], rf[0], atol=1e-8, rtol=0)
        np.testing.assert_allclose(fc[b], rf[1], atol=1e-8, rtol=0)
        np.testing.assert_allclose(sm[b], rs[0], atol=1e-8, rtol=0)
        np.testing.assert_allclose(sc[b], rs[1], atol=1e-8, rtol=0)
        assert abs(ll[b] - ref.loglikelihood(zm)) < 1e-8


def test_shared_pattern_path_and_torch_backend() -> None:
    p = random_model(6, 3, 2)
    kf = KalmanFilter(**p)
    _, z = kf.sample(300, n_tracks=3, seed=1)
    z[:, 10] = np.nan  # the same gap in every track: one shared covariance recursion
    sm, sc = kf.smooth(z)
    ref = pykalman_of(p)
    rs = ref.smooth(np.ma.masked_invalid(z[2]))
    np.testing.assert_allclose(sm[2], rs[0], atol=1e-8, rtol=0)
    np.testing.assert_allclose(sc[2], rs[1], atol=1e-8, rtol=0)
    tm, tc = kf.smooth(torch.from_numpy(z))
    assert isinstance(tm, torch.Tensor) and tm.dtype == torch.float64
    np.testing.assert_allclose(tm.numpy(), sm, atol=1e-12, rtol=0)
    fm32, _ = kf.filter(torch.from_numpy(z).float())
    assert fm32.dtype == torch.float32
    np.testing.assert_allclose(fm32.numpy(), kf.filter(z)[0], atol=1e-3, rtol=1e-3)


def test_mask_argument_and_masked_array_agree_with_nan_rows() -> None:
    p = random_model(7)
    kf = KalmanFilter(**p)
    _, z = kf.sample(30, seed=2)
    mask = np.zeros(30, dtype=bool)
    mask[[3, 4, 15]] = True
    with_nan = z.copy()
    with_nan[mask] = np.nan
    a = kf.filter(with_nan)[0]
    b = kf.filter(z, mask=mask)[0]
    c = kf.filter(np.ma.array(z, mask=np.repeat(mask[:, None], 2, 1)))[0]
    np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(a, c, atol=1e-12)
    assert not np.allclose(a, kf.filter(z)[0])


def test_per_track_initial_mean() -> None:
    p = random_model(8)
    _, z = KalmanFilter(**p).sample(20, n_tracks=2, seed=3)
    mu = np.stack([p["initial_state_mean"], -p["initial_state_mean"]])
    kf = KalmanFilter(**{**p, "initial_state_mean": mu})
    means, _ = kf.smooth(z)
    for b in range(2):
        ref = pykalman_of({**p, "initial_state_mean": mu[b]}).smooth(z[b])[0]
        np.testing.assert_allclose(means[b], ref, atol=1e-8)


def test_filter_update_equals_one_filter_step() -> None:
    p = random_model(9)
    kf = KalmanFilter(**p)
    _, z = kf.sample(5, seed=4)
    means, covs = kf.filter(z)
    m, c = kf.filter_update(means[2], covs[2], z[3])
    np.testing.assert_allclose(m, means[3], atol=1e-10)
    np.testing.assert_allclose(c, covs[3], atol=1e-10)
    m_pred, c_pred = kf.filter_update(means[2], covs[2], None)
    a = p["transition_matrix"]
    np.testing.assert_allclose(m_pred, a @ means[2] + p["transition_offset"], atol=1e-12)
    np.testing.assert_allclose(
        c_pred, a @ covs[2] @ a.T + p["transition_covariance"], atol=1e-12
    )


def test_long_run_covariances_stay_symmetric_psd() -> None:
    p = random_model(10, 4, 1)
    p["observation_covariance"] = np.array([[1e-6]])  # stiff update
    kf = KalmanFilter(**p)
    _, z = kf.sample(3000, seed=5)
    _, covs = kf.smooth(z)
    assert np.array_equal(covs, np.swapaxes(covs, -1, -2))
    assert np.linalg.eigvalsh(covs).min() > -1e-12


@pytest.mark.parametrize("em_vars", [None, "all"])
def test_em_raises_loglik_and_matches_pykalman(em_vars: str | None) -> None:
    p = random_model(11)
    _, z = KalmanFilter(**p).sample(80, seed=6)
    z[[10, 50]] = np.nan
    start = {
        **p,
        "transition_covariance": np.eye(3),
        "observation_covariance": 2 * np.eye(2),
        "initial_state_covariance": np.eye(3),
    }
    ours = KalmanFilter(**start).em(z, n_iter=6, em_vars=em_vars)
    hist = np.array(ours.loglikelihood_history)
    assert len(hist) == 7
    assert np.all(np.diff(hist) > 0), hist
    ref = pykalman_of(start).em(np.ma.masked_invalid(z), n_iter=6, em_vars=em_vars or None)
    pairs = {
        "transition_matrix": "transition_matrices",
        "observation_matrix": "observation_matrices",
        "transition_offset": "transition_offsets",
        "observation_offset": "observation_offsets",
        "transition_covariance": "transition_covariance",
        "observation_covariance": "observation_covariance",
        "initial_state_mean": "initial_state_mean",
        "initial_state_covariance": "initial_state_covariance",
    }
    for ours_name, ref_name in pairs.items():
        np.testing.assert_allclose(
            getattr(ours, ours_name), getattr(ref, ref_name), atol=1e-8, rtol=1e-8,
            err_msg=ours_name,
        )
    assert abs(hist[-1] - ref.loglikelihood(np.ma.masked_invalid(z))) < 1e-6


def test_em_batched_pools_tracks_and_improves() -> None:
    p = random_model(12)
    _, z = KalmanFilter(**p).sample(50, n_tracks=3, seed=7)
    kf = KalmanFilter(**{**p, "observation_covariance": 5 * np.eye(2)})
    kf.em(z, n_iter=4, em_vars=["observation_covariance"])
    assert np.all(np.diff(kf.loglikelihood_history) > 0)
    err_before = np.abs(5 * np.eye(2) - p["observation_covariance"]).max()
    assert np.abs(kf.observation_covariance - p["observation_covariance"]).max() < err_before


def test_bad_input_names_the_argument() -> None:
    p = random_model(13)
    with pytest.raises(ValueError, match="transition_covariance is not symmetric"):
        bad = np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.0]])
        KalmanFilter(**{**p, "transition_covariance": bad})
    with pytest.raises(ValueError, match="observation_covariance is not positive semi-definite"):
        KalmanFilter(**{**p, "observation_covariance": np.array([[1.0, 2.0], [2.0, 1.0]])})
    with pytest.raises(ValueError, match="observation_matrix"):
        KalmanFilter(**{**p, "observation_matrix": np.ones((2, 4))})
    with pytest.raises(ValueError, match="initial_state_mean contains NaN"):
        KalmanFilter(**{**p, "initial_state_mean": np.array([0.0, np.nan, 0.0])})
    kf = KalmanFilter(**p)
    with pytest.raises(ValueError, match="measurements contains inf"):
        kf.filter(np.array([[0.0, np.inf], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="measurements have 3 components"):
        kf.filter(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="measurements must have shape"):
        kf.filter(np.zeros(5))
    with pytest.raises(ValueError, match="em_vars"):
        kf.em(np.zeros((5, 2)), em_vars=["nonsense"])
    with pytest.raises(ValueError, match="mask"):
        kf.filter(np.zeros((5, 2)), mask=np.zeros(4, dtype=bool))
