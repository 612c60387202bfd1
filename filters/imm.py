"""Interacting multiple models (IMM, Blom & Bar-Shalom 1988) over linear-Gaussian motion
models sharing one state and one measurement model, batched over tracks.

Typical use, tracking other cars: constant velocity plus constant turns at a few known
rates, state ``[x, y, vx, vy]`` (m, m/s), position measurements::

    models = [constant_velocity_model(dt, q), constant_turn_model(dt, 0.3, q),
              constant_turn_model(dt, -0.3, q)]
    imm = InteractingMultipleModel(models, H, R, x0, P0, switch_probability=0.05)
    means, covs = imm.filter(z)            # z [B, T, 2] -> [B, T, 4], [B, T, 4, 4]
    imm.mode_probabilities                 # [B, T, 3]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from worldplan.filters._common import (
    ArrayLike,
    check_covariance,
    finish,
    prepare_measurements,
    single_threaded,
    symmetrise,
    to_tensor,
)


def _white_acceleration_q(dt: float, q: float) -> np.ndarray:
    """Process noise of a discretised continuous white-noise acceleration with spectral
    density ``q`` (m^2/s^3), state ``[x, y, vx, vy]``."""
    block = np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]]) * q
    out = np.zeros((4, 4))
    for axis in (0, 1):
        idx = [axis, axis + 2]
        out[np.ix_(idx, idx)] = block
    return out


def constant_velocity_model(dt: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """``(F [4, 4], Q [4, 4])`` for state ``[x, y, vx, vy]``, step ``dt`` seconds."""
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    if not q >= 0:
        raise ValueError(f"q must be >= 0, got {q}")
    f = np.eye(4)
    f[0, 2] = f[1, 3] = dt
    return f, _white_acceleration_q(dt, q)


def constant_turn_model(dt: float, omega: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """``(F [4, 4], Q [4, 4])`` for a coordinated turn at a known rate ``omega`` (rad/s,
    positive = counter-clockwise), state ``[x, y, vx, vy]``."""
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    if not q >= 0:
        raise ValueError(f"q must be >= 0, got {q}")
    if abs(omega) < 1e-9:
        return constant_velocity_model(dt, q)
    s, c = math.sin(omega * dt), math.cos(omega * dt)
    f = np.array(
        [
            [1, 0, s / omega, -(1 - c) / omega],
            [0, 1, (1 - c) / omega, s / omega],
            [0, 0, c, -s],
            [0, 0, s, c],
        ]
    )
    return f, _white_acceleration_q(dt, q)


class InteractingMultipleModel:
    """IMM filter over ``K`` linear models ``x_{t+1} = F_k x_t + N(0, Q_k)`` with a shared
    measurement ``z_t = H x_t + N(0, R)`` and a Markov chain over the active model.

    Arguments: ``models`` a sequence of ``(F [S, S], Q [S, S])``; ``observation_matrix``
    ``[M, S]``; ``observation_covariance`` ``[M, M]``; ``initial_state_mean`` ``[S]`` or
    ``[B, S]``; ``initial_state_covariance`` ``[S, S]``; either
    ``transition_probabilities`` ``[K, K]`` (row ``i``: from model ``i``; rows sum to 1) or
    ``switch_probability`` (stay with ``1 - p``, switch uniformly otherwise);
    ``initial_mode_probabilities`` ``[K]`` (default uniform).
    Conventions as :class:`worldplan.filters.KalmanFilter` (first measurement observes the initial
    state, NaN rows missing, numpy/torch in -> same out).
    """

    @single_threaded
    def __init__(
        self,
        models: Sequence[tuple[ArrayLike, ArrayLike]],
        observation_matrix: ArrayLike,
        observation_covariance: ArrayLike,
        initial_state_mean: ArrayLike,
        initial_state_covariance: ArrayLike,
        transition_probabilities: ArrayLike | None = None,
        switch_probability: float = 0.05,
        initial_mode_probabilities: ArrayLike | None = None,
    ) -> None:
        if len(models) < 1:
            raise ValueError("models must hold at least one (F, Q) pair")
        h = to_tensor("observation_matrix", observation_matrix)
        if h.ndim != 2:
            raise ValueError(f"observation_matrix must be [M, S], got {list(h.shape)}")
        m_dim, s_dim = h.shape
        fs, qs = [], []
        for k, pair in enumerate(models):
            if len(pair) != 2:
                raise ValueError(f"models[{k}] must be a pair (F, Q)")
            f = to_tensor(f"models[{k}] F", pair[0])
            q = to_tensor(f"models[{k}] Q", pair[1])
            if f.shape != (s_dim, s_dim):
                raise ValueError(
                    f"models[{k}] F must be [{s_dim}, {s_dim}] (S from observation_matrix), "
                    f"got {list(f.shape)}"
                )
            check_covariance(f"models[{k}] Q", q, s_dim)
            fs.append(f)
            qs.append(q)
        r = to_tensor("observation_covariance", observation_covariance)
        check_covariance("observation_covariance", r, m_dim)
        mu = to_tensor("initial_state_mean", initial_state_mean)
        if mu.ndim not in (1, 2) or mu.shape[-1] != s_dim:
            raise ValueError(f"initial_state_mean must be [{s_dim}] or [B, {s_dim}]")
        p0 = to_tensor("initial_state_covariance", initial_state_covariance)
        check_covariance("initial_state_covariance", p0, s_dim)
        n_k = len(models)
        if transition_probabilities is None:
            if not 0.0 <= switch_probability <= 1.0:
                raise ValueError(
                    f"switch_probability must be in [0, 1], got {switch_probability}"
                )
            off = switch_probability / max(n_k - 1, 1)
            pi = torch.full((n_k, n_k), off, dtype=torch.float64)
            pi.fill_diagonal_(1.0 - switch_probability if n_k > 1 else 1.0)
        else:
            pi = to_tensor("transition_probabilities", transition_probabilities)
            if pi.shape != (n_k, n_k):
                raise ValueError(f"transition_probabilities must be [{n_k}, {n_k}]")
        if bool((pi < 0).any()) or not torch.allclose(pi.sum(1), torch.ones(n_k, dtype=pi.dtype)):
            raise ValueError("transition_probabilities must be non-negative with rows summing to 1")
        if initial_mode_probabilities is None:
            mode0 = torch.full((n_k,), 1.0 / n_k, dtype=torch.float64)
        else:
            mode0 = to_tensor("initial_mode_probabilities", initial_mode_probabilities)
            bad = mode0.shape != (n_k,) or bool((mode0 < 0).any())
            if bad or abs(float(mode0.sum()) - 1) > 1e-9:
                raise ValueError(f"initial_mode_probabilities must be [{n_k}], >= 0, summing to 1")
        self.F, self.Q = torch.stack(fs), torch.stack(qs)  # [K, S, S]
        self.H, self.R, self.x0, self.P0 = h, r, mu, p0
        self.transition_probabilities, self.initial_mode_probabilities = pi, mode0
        self.state_dim, self.obs_dim, self.n_models = s_dim, m_dim, n_k
        self.mode_probabilities: Any = None

    @single_threaded
    def filter(self, measurements: ArrayLike, mask: ArrayLike | None = None) -> tuple[Any, Any]:
        """Combined ``(means [B, T, S], covs [B, T, S, S])``; the model probabilities go to
        ``self.mode_probabilities`` ``[B, T, K]`` (no ``B`` for ``[T, M]`` input)."""
        z, missing, squeeze, as_numpy = prepare_measurements(measurements, self.obs_dim, mask)
        b, t_sz, _ = z.shape
        kw = {"dtype": z.dtype, "device": z.device}
        f, q, h, r = (x.to(**kw) for x in (self.F, self.Q, self.H, self.R))
        pi = self.transition_probabilities.to(**kw)
        n_k, s = self.n_models, self.state_dim
        x0 = self.x0.to(**kw)
        x0 = x0.expand(b, -1) if x0.ndim == 1 else x0
        if x0.shape[0] != b:
            raise ValueError(f"initial_state_mean has {x0.shape[0]} tracks, measurements {b}")
        m = x0.unsqueeze(1).expand(b, n_k, s)  # [B, K, S]
        p = self.P0.to(**kw).expand(b, n_k, s, s)
        logmu = torch.log(self.initial_mode_probabilities.to(**kw)).expand(b, n_k)
        eye = torch.eye(s, **kw)
        means = torch.empty(t_sz, b, s, **kw)
        covs = torch.empty(t_sz, b, s, s, **kw)
        modes = torch.empty(t_sz, b, n_k, **kw)
        log2pi = self.obs_dim * math.log(2 * math.pi)
        for t in range(t_sz):
            if t > 0:
                # mixing: mu_{i|j} = pi_ij mu_i / c_j
                joint = logmu.unsqueeze(-1) + torch.log(pi.clamp_min(1e-300))  # [B, Ki, Kj]
                logc = torch.logsumexp(joint, dim=1)  # [B, Kj]
                w = torch.exp(joint - logc.unsqueeze(1))  # [B, Ki, Kj]
                m0 = torch.einsum("bij,bis->bjs", w, m)
                dev = m.unsqueeze(2) - m0.unsqueeze(1)  # [B, Ki, Kj, S]
                p0 = torch.einsum("bij,bisr->bjsr", w, p)
                p0 = p0 + torch.einsum("bij,bijs,bijr->bjsr", w, dev, dev)
                m = torch.einsum("kij,bkj->bki", f, m0)
                p = symmetrise(f @ p0 @ f.mT + q)
                logmu = logc
            obs = ~missing[:, t]
            if bool(obs.any()):
                s_cov = symmetrise(h @ p @ h.mT + r)  # [B, K, M, M]
                chol, info = torch.linalg.cholesky_ex(s_cov)
                if bool((info != 0).any()):
                    raise ValueError("innovation covariance is not positive definite; "
                                     "make observation_covariance positive definite")
                s_inv = torch.cholesky_inverse(chol)
                gain = p @ h.mT @ s_inv  # [B, K, S, M]
                innov = z[:, t].unsqueeze(1) - m @ h.mT  # [B, K, M]
                m_u = m + (gain @ innov.unsqueeze(-1)).squeeze(-1)
                ikh = eye - gain @ h
                p_u = symmetrise(ikh @ p @ ikh.mT + gain @ r @ gain.mT)
                quad = ((s_inv @ innov.unsqueeze(-1)).squeeze(-1) * innov).sum(-1)
                logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                loglik = -0.5 * (log2pi + logdet + quad)  # [B, K]
                post = logmu + loglik
                post = post - torch.logsumexp(post, dim=-1, keepdim=True)
                sel = obs[:, None]
                m = torch.where(sel[..., None], m_u, m)
                p = torch.where(sel[..., None, None], p_u, p)
                logmu = torch.where(sel, post, logmu)
            mu = torch.exp(logmu)
            mean = torch.einsum("bk,bks->bs", mu, m)
            dev = m - mean.unsqueeze(1)
            cov = torch.einsum("bk,bksr->bsr", mu, p)
            cov = cov + torch.einsum("bk,bks,bkr->bsr", mu, dev, dev)
            means[t], covs[t], modes[t] = mean, symmetrise(cov), mu
        self.mode_probabilities = finish(modes.transpose(0, 1), squeeze, as_numpy)
        return (
            finish(means.transpose(0, 1), squeeze, as_numpy),
            finish(covs.transpose(0, 1), squeeze, as_numpy),
        )
