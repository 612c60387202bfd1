"""State estimation, batched over tracks: Kalman filter + RTS smoother + EM, EKF, UKF,
particle filter and IMM. numpy in -> float64 numpy out; torch in -> torch out (any device).

See docs/filters.md for the API and the measured figures.
"""

from worldplan.filters.imm import (
    InteractingMultipleModel,
    constant_turn_model,
    constant_velocity_model,
)
from worldplan.filters.kalman import KalmanFilter
from worldplan.filters.nonlinear import ExtendedKalmanFilter, UnscentedKalmanFilter
from worldplan.filters.particle import (
    ParticleDegeneracyError,
    ParticleDegeneracyWarning,
    ParticleFilter,
)

__all__ = [
    "ExtendedKalmanFilter",
    "InteractingMultipleModel",
    "KalmanFilter",
    "ParticleDegeneracyError",
    "ParticleDegeneracyWarning",
    "ParticleFilter",
    "UnscentedKalmanFilter",
    "constant_turn_model",
    "constant_velocity_model",
]
