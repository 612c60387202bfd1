"""IMM: beats every single motion model on a manoeuvring track; one model = the KF."""

from __future__ import annotations

import numpy as np
import pytest

from worldplan.filters import KalmanFilter
from worldplan.filters.imm import (
    InteractingMultipleModel,
    constant_turn_model,
    constant_velocity_model,
)

DT = 0.5
H = np.eye(2, 4)
R = 4.0 * np.eye(2)
X0 = np.array([0.0, 0.0, 10.0, 0.0])
P0 = np.diag([4.0, 4.0, 25.0, 25.0])
SEGMENTS = [(0.0, 40), (0.25, 25), (0.0, 30), (-0.25, 25), (0.0, 30)]  # (rad/s, steps)


def manoeuvring_track(seed: int = 0, tracks: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Truth ``[T, 4]`` (straight, left turn, straight, right turn, straight at 10 m/s) and
    position measurements ``[B, T, 2]`` with 2 m noise."""
    rng = np.random.default_rng(seed)
    x = X0.copy()
    states = [x]
    for omega, steps in SEGMENTS:
        f, _ = constant_turn_model(DT, omega, 0.0)
        for _ in range(steps):
            x = f @ x
            states.append(x)
    truth = np.array(states)
    z = truth[None, :, :2] + rng.normal(scale=2.0, size=(tracks, len(truth), 2))
    return truth, z


def rmse(means: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(((means[..., :2] - truth[None, :, :2]) ** 2).sum(-1).mean()))


def test_imm_beats_each_single_model_on_a_manoeuvring_track() -> None:
    truth, z = manoeuvring_track()
    q = 0.05
    models = [
        constant_velocity_model(DT, q),
        constant_turn_model(DT, 0.25, q),
        constant_turn_model(DT, -0.25, q),
    ]
    imm = InteractingMultipleModel(models, H, R, X0, P0, switch_probability=0.05)
    means, covs = imm.filter(z)
    assert means.shape == (6, 151, 4) and covs.shape == (6, 151, 4, 4)
    err_imm = rmse(means, truth)
    singles = {
        name: rmse(KalmanFilter(f, H, qq, R, initial_state_mean=X0,
                                initial_state_covariance=P0).filter(z)[0], truth)
        for name, (f, qq) in zip(["cv", "ct+", "ct-"], models, strict=True)
    }
    # also a constant-velocity model with its noise raised to follow the turns
    f, qq = constant_velocity_model(DT, 2.0)
    singles["cv, q=2"] = rmse(
        KalmanFilter(f, H, qq, R, initial_state_mean=X0, initial_state_covariance=P0).filter(z)[0],
        truth,
    )
    for name, err in singles.items():
        assert err_imm < err, (name, err, err_imm)
    # the mode probabilities pick the left-turn model during the left turn (steps 40-65)
    modes = imm.mode_probabilities
    assert modes.shape == (6, 151, 3)
    np.testing.assert_allclose(modes.sum(-1), 1.0, atol=1e-12)
    assert modes[:, 47:65, 1].mean() > 0.6
    assert modes[:, 102:120, 2].mean() > 0.6  # the right turn (steps 95-120)


def test_one_model_imm_equals_the_kalman_filter() -> None:
    truth, z = manoeuvring_track(seed=1, tracks=2)
    z[0, 10] = np.nan
    f, q = constant_velocity_model(DT, 0.5)
    imm = InteractingMultipleModel([(f, q)], H, R, X0, P0)
    kf = KalmanFilter(f, H, q, R, initial_state_mean=X0, initial_state_covariance=P0)
    m, c = imm.filter(z)
    km, kc = kf.filter(z)
    np.testing.assert_allclose(m, km, atol=1e-8)
    np.testing.assert_allclose(c, kc, atol=1e-8)


def test_bad_input() -> None:
    cv = constant_velocity_model(DT, 0.1)
    with pytest.raises(ValueError, match="transition_probabilities must be non-negative"):
        InteractingMultipleModel([cv, cv], H, R, X0, P0,
                                 transition_probabilities=[[0.5, 0.6], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"models\[1\] F must be"):
        InteractingMultipleModel([cv, (np.eye(3), np.eye(3))], H, R, X0, P0)
    with pytest.raises(ValueError, match="observation_covariance is not symmetric"):
        InteractingMultipleModel([cv], H, np.array([[1.0, 0.2], [0.0, 1.0]]), X0, P0)
    with pytest.raises(ValueError, match="dt must be positive"):
        constant_turn_model(0.0, 0.1, 0.1)
