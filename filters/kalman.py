"""Linear-Gaussian Kalman filter, Rauch-Tung-Striebel smoother and EM, batched over tracks.

Model (pykalman's conventions, argument names in the singular)::

    x_0     ~ N(initial_state_mean, initial_state_covariance)
    x_{t+1} = transition_matrix  @ x_t + transition_offset  + N(0, transition_covariance)
    z_t     = observation_matrix @ x_t + observation_offset + N(0, observation_covariance)

The first measurement ``z_0`` observes the initial state. A measurement row holding any NaN
(or masked by a ``np.ma.MaskedArray`` or the ``mask`` argument) is missing and skipped.

Shapes: ``S`` state size, ``M`` measurement size, ``T`` time steps, ``B`` tracks.
Measurements are ``[T, M]`` (one track) or ``[B, T, M]`` (``B`` independent tracks that share
the model, filtered together with batched matrix products and a loop over time only).
numpy input runs in float64 on the CPU and returns numpy; torch input keeps its dtype and
device and returns torch.

When all tracks share the initial covariance and the same missing-measurement pattern,
the covariance recursion does not depend on the data, so it runs once and the returned
covariance arrays are broadcast views (stride 0 over tracks): treat them as read-only.

Length: the filter, the RTS smoother and EM share the model's parameters, their checks
and the batched numerics; EM calls both of the others on every iteration.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldplan.filters._common import (
    ArrayLike,
    check_covariance,
    check_shape,
    finish,
    prepare_measurements,
    single_threaded,
    symmetrise,
    to_tensor,
)

log = logging.getLogger(__name__)

PARAMETERS = (
    "transition_matrix",
    "observation_matrix",
    "transition_offset",
    "observation_offset",
    "transition_covariance",
    "observation_covariance",
    "initial_state_mean",
    "initial_state_covariance",
)
DEFAULT_EM_VARS = (
    "transition_covariance",
    "observation_covariance",
    "initial_state_mean",
    "initial_state_covariance",
)
# pykalman's plural spellings, accepted in ``em_vars`` so code can switch over unchanged.
_ALIASES = {
    "transition_matrices": "transition_matrix",
    "observation_matrices": "observation_matrix",
    "transition_offsets": "transition_offset",
    "observation_offsets": "observation_offset",
}


@dataclass
class KalmanPass:
    """Everything one forward pass (and optionally the backward pass) computes, as tensors.

    Time-major: means ``[T, B, S]``; covariances ``[T, Bc, S, S]`` with ``Bc`` 1 (shared by
    all tracks) or ``B``; ``loglik`` is ``[B]``; smoother gains ``[T-1, Bc, S, S]``.
    """

    predicted_means: torch.Tensor
    predicted_covs: torch.Tensor
    filtered_means: torch.Tensor
    filtered_covs: torch.Tensor
    loglik: torch.Tensor
    smoothed_means: torch.Tensor | None = None
    smoothed_covs: torch.Tensor | None = None
    smoother_gains: torch.Tensor | None = None
    cov_index: torch.Tensor | None = None  # [B] track -> covariance row, when Bc < B > 1

    def per_track(self, cov_like: torch.Tensor) -> torch.Tensor:
        """``[T, Bc, ...]`` -> ``[T, B, ...]`` (or ``Bc`` 1, broadcast by the caller)."""
        return cov_like if self.cov_index is None else cov_like[:, self.cov_index]


def _apply(mat: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``mat @ vec`` per track: ``[Bc, R, C] x [B, C] -> [B, R]`` (``Bc`` 1 or ``B``)."""
    if mat.shape[0] == 1:
        return vec @ mat[0].mT
    return torch.bmm(mat, vec.unsqueeze(-1)).squeeze(-1)


def _inverse_spd(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse and log-determinant of symmetric positive (semi-)definite ``[..., M, M]``.

    Cholesky when it succeeds; the pseudo-inverse (as pykalman uses) otherwise.
    """
    chol, info = torch.linalg.cholesky_ex(s)
    if bool((info == 0).all()):
        inv = torch.cholesky_inverse(chol)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return inv, logdet
    inv = torch.linalg.pinv(s, hermitian=True)
    logdet = torch.linalg.slogdet(s).logabsdet
    return symmetrise(inv), logdet


def _expand_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x if x.shape[0] == batch else x.expand(batch, *x.shape[1:])


def _batch_major(
    means: torch.Tensor, covs: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-major ``[T, B, S]``, ``[T, Bc, S, S]`` -> ``[B, T, S]`` (contiguous) and a
    ``[B, T, S, S]`` view (broadcast over tracks when ``Bc`` is 1)."""
    covs = covs.transpose(0, 1)
    return means.transpose(0, 1).contiguous(), _expand_batch(covs, batch)


class KalmanFilter:
    """Kalman filter, RTS smoother and EM for a linear-Gaussian state-space model.

    Arguments (pykalman's names in the singular; numpy arrays or torch tensors):

    - ``transition_matrix`` ``[S, S]`` (default identity), ``transition_offset`` ``[S]``
      (default 0), ``transition_covariance`` ``[S, S]`` (default identity)
    - ``observation_matrix`` ``[M, S]`` (default ``eye(M, S)``), ``observation_offset`` ``[M]``,
      ``observation_covariance`` ``[M, M]``
    - ``initial_state_mean`` ``[S]`` or per track ``[B, S]``; ``initial_state_covariance``
      ``[S, S]`` or per track ``[B, S, S]``
    - ``n_dim_state``, ``n_dim_obs``: needed only when no matrix gives the sizes.

    Covariances must be symmetric positive semi-definite, everything finite, dimensions
    consistent; otherwise a ``ValueError`` names the argument. Parameters are stored in
    float64 and read back (e.g. after :meth:`em`) as numpy arrays, or as tensors when they
    were all given as tensors.

    Example, smoothing ``B`` constant-velocity tracks with gaps (NaN rows)::

        kf = KalmanFilter(transition_matrix=F, observation_matrix=H,
                          transition_covariance=Q, observation_covariance=R,
                          initial_state_mean=np.zeros(4), initial_state_covariance=100*np.eye(4))
        means, covs = kf.smooth(z)      # z [B, T, 2] -> means [B, T, 4], covs [B, T, 4, 4]
    """

    @single_threaded
    def __init__(
        self,
        transition_matrix: ArrayLike | None = None,
        observation_matrix: ArrayLike | None = None,
        transition_covariance: ArrayLike | None = None,
        observation_covariance: ArrayLike | None = None,
        transition_offset: ArrayLike | None = None,
        observation_offset: ArrayLike | None = None,
        initial_state_mean: ArrayLike | None = None,
        initial_state_covariance: ArrayLike | None = None,
        n_dim_state: int | None = None,
        n_dim_obs: int | None = None,
        em_vars: Iterable[str] | str | None = None,
    ) -> None:
        given = {
            "transition_matrix": transition_matrix,
            "observation_matrix": observation_matrix,
            "transition_covariance": transition_covariance,
            "observation_covariance": observation_covariance,
            "transition_offset": transition_offset,
            "observation_offset": observation_offset,
            "initial_state_mean": initial_state_mean,
            "initial_state_covariance": initial_state_covariance,
        }
        supplied = [v for v in given.values() if v is not None]
        self._return_numpy = not (supplied and all(isinstance(v, torch.Tensor) for v in supplied))
        p = {k: to_tensor(k, v) for k, v in given.items() if v is not None}
        s_dim, m_dim = self._infer_dims(p, n_dim_state, n_dim_obs)
        defaults = {
            "transition_matrix": torch.eye(s_dim, dtype=torch.float64),
            "observation_matrix": torch.eye(m_dim, s_dim, dtype=torch.float64),
            "transition_covariance": torch.eye(s_dim, dtype=torch.float64),
            "observation_covariance": torch.eye(m_dim, dtype=torch.float64),
            "transition_offset": torch.zeros(s_dim, dtype=torch.float64),
            "observation_offset": torch.zeros(m_dim, dtype=torch.float64),
            "initial_state_mean": torch.zeros(s_dim, dtype=torch.float64),
            "initial_state_covariance": torch.eye(s_dim, dtype=torch.float64),
        }
        self._p: dict[str, torch.Tensor] = {**defaults, **p}
        self.n_dim_state, self.n_dim_obs = s_dim, m_dim
        self._validate()
        self.em_vars = self._parse_em_vars(em_vars if em_vars is not None else DEFAULT_EM_VARS)
        self.loglikelihood_history: list[float] = []

    # -- parameters ---------------------------------------------------------------------
    @staticmethod
    def _infer_dims(
        p: dict[str, torch.Tensor], n_dim_state: int | None, n_dim_obs: int | None
    ) -> tuple[int, int]:
        s_cands: list[tuple[str, int]] = []
        m_cands: list[tuple[str, int]] = []
        for k, v in p.items():
            if v.ndim == 0:
                raise ValueError(f"{k} must be an array, got a scalar")
            if k in ("transition_matrix", "transition_covariance", "initial_state_covariance"):
                s_cands.append((k, v.shape[-1]))
            elif k in ("transition_offset", "initial_state_mean"):
                s_cands.append((k, v.shape[-1]))
            elif k == "observation_matrix":
                if v.ndim != 2:
                    raise ValueError(f"observation_matrix must be [M, S], got {list(v.shape)}")
                m_cands.append((k, v.shape[0]))
                s_cands.append((k, v.shape[1]))
            else:
                m_cands.append((k, v.shape[-1]))
        if n_dim_state is not None:
            s_cands.insert(0, ("n_dim_state", int(n_dim_state)))
        if n_dim_obs is not None:
            m_cands.insert(0, ("n_dim_obs", int(n_dim_obs)))
        s_dim = s_cands[0][1] if s_cands else 1
        m_dim = m_cands[0][1] if m_cands else 1
        for name, d in s_cands:
            if d != s_dim:
                raise ValueError(
                    f"{name} implies a state of size {d}, but {s_cands[0][0]} implies {s_dim}"
                )
        for name, d in m_cands:
            if d != m_dim:
                raise ValueError(
                    f"{name} implies a measurement of size {d}, but {m_cands[0][0]} implies "
                    f"{m_dim}"
                )
        return s_dim, m_dim

    def _validate(self) -> None:
        s, m, p = self.n_dim_state, self.n_dim_obs, self._p
        check_shape("transition_matrix", p["transition_matrix"], (s, s))
        check_shape("observation_matrix", p["observation_matrix"], (m, s))
        check_shape("transition_offset", p["transition_offset"], (s,))
        check_shape("observation_offset", p["observation_offset"], (m,))
        check_covariance("transition_covariance", p["transition_covariance"], s)
        check_covariance("observation_covariance", p["observation_covariance"], m)
        check_covariance("initial_state_covariance", p["initial_state_covariance"], s, True)
        mu = p["initial_state_mean"]
        if mu.ndim not in (1, 2) or mu.shape[-1] != s:
            raise ValueError(f"initial_state_mean must be [{s}] or [B, {s}], got {list(mu.shape)}")
        p0 = p["initial_state_covariance"]
        if mu.ndim == 2 and p0.ndim == 3 and mu.shape[0] != p0.shape[0]:
            raise ValueError(
                f"initial_state_mean has {mu.shape[0]} tracks, initial_state_covariance "
                f"{p0.shape[0]}"
            )

    @staticmethod
    def _parse_em_vars(em_vars: Iterable[str] | str) -> tuple[str, ...]:
        if isinstance(em_vars, str):
            if em_vars == "all":
                return PARAMETERS
            em_vars = [em_vars]
        out = []
        for name in em_vars:
            key = _ALIASES.get(name, name)
            if key not in PARAMETERS:
                raise ValueError(
                    f"em_vars: unknown parameter {name!r}; choose from {', '.join(PARAMETERS)}"
                )
            out.append(key)
        return tuple(out)

    def _get(self, name: str) -> Any:
        v = self._p[name]
        return v.numpy().copy() if self._return_numpy else v.clone()

    transition_matrix = property(lambda self: self._get("transition_matrix"))
    observation_matrix = property(lambda self: self._get("observation_matrix"))
    transition_offset = property(lambda self: self._get("transition_offset"))
    observation_offset = property(lambda self: self._get("observation_offset"))
    transition_covariance = property(lambda self: self._get("transition_covariance"))
    observation_covariance = property(lambda self: self._get("observation_covariance"))
    initial_state_mean = property(lambda self: self._get("initial_state_mean"))
    initial_state_covariance = property(lambda self: self._get("initial_state_covariance"))

    def _params_for(
        self, dtype: torch.dtype, device: torch.device, batch: int
    ) -> dict[str, torch.Tensor]:
        p = {k: v.to(dtype=dtype, device=device) for k, v in self._p.items()}
        mu, p0 = p["initial_state_mean"], p["initial_state_covariance"]
        for name, val in (("initial_state_mean", mu), ("initial_state_covariance", p0)):
            batched = val.ndim == (2 if name == "initial_state_mean" else 3)
            if batched and val.shape[0] != batch:
                raise ValueError(
                    f"{name} is given for {val.shape[0]} tracks but the measurements have {batch}"
                )
        p["initial_state_mean"] = mu if mu.ndim == 2 else mu.unsqueeze(0)
        p["initial_state_covariance"] = p0 if p0.ndim == 3 else p0.unsqueeze(0)
        return p

    # -- core passes --------------------------------------------------------------------
    def _forward(
        self,
        z: torch.Tensor,
        missing: torch.Tensor,
        p: dict[str, torch.Tensor],
        predicted: bool = True,
        loglik: bool = True,
    ) -> KalmanPass:
        """Forward pass over ``z`` ``[B, T, M]`` with ``missing`` ``[B, T]``.

        Two stages: the covariance recursion (data-independent; once for all tracks when
        they share the initial covariance and the missing pattern), which yields the gains;
        then the mean recursion, one fused multiply-add per step for all tracks.
        ``predicted=False`` skips the predicted means (only the smoother and the
        log-likelihood use them), ``loglik=False`` the log-likelihood (left at zero).
        """
        b_sz, t_sz, _ = z.shape
        s = self.n_dim_state
        a, q, off_a = p["transition_matrix"], p["transition_covariance"], p["transition_offset"]
        h, r, off_h = p["observation_matrix"], p["observation_covariance"], p["observation_offset"]
        # covariances depend only on the missing pattern: with a shared initial covariance,
        # run the recursion once per distinct pattern (Bc of them) and map tracks to it
        index: torch.Tensor | None = None
        if p["initial_state_covariance"].shape[0] == 1:
            if bool((missing == missing[:1]).all()):
                patterns = missing[:1]
            else:
                patterns, index = torch.unique(missing, dim=0, return_inverse=True)
        else:
            patterns = missing
        bc = patterns.shape[0]
        miss_c = patterns.T  # [T, Bc]
        kw = {"dtype": z.dtype, "device": z.device}
        eye = torch.eye(s, **kw)
        m_sz = self.n_dim_obs
        pc = torch.empty(t_sz, bc, s, s, **kw)
        fc = torch.empty(t_sz, bc, s, s, **kw)
        gains = torch.empty(t_sz, bc, s, m_sz, **kw)
        s_invs = torch.empty(t_sz, bc, m_sz, m_sz, **kw)
        logdets = torch.empty(t_sz, bc, **kw)

        # 1) covariances and gains (a missing row gets a zero gain)
        cov = _expand_batch(p["initial_state_covariance"], bc)
        # once no row is missing any more and the covariance has stopped changing (to
        # rounding), the rest of the recursion repeats: copy instead of recomputing.
        any_missing = miss_c.any(1)
        last_missing = int(torch.nonzero(any_missing).max()) if bool(any_missing.any()) else -1
        steady_from = t_sz
        steady_tol = 50 * torch.finfo(z.dtype).eps  # 1e-14 in float64
        for t in range(t_sz):
            if t > 0:
                cov = symmetrise(a @ cov @ a.mT + q)
                if t > last_missing + 1 and bool(
                    ((cov - pc[t - 1]).abs() <= steady_tol * cov.abs().amax((-2, -1), keepdim=True))
                    .all()
                ):
                    steady_from = t
                    break
            pc[t] = cov
            s_inv, logdet = _inverse_spd(symmetrise(h @ cov @ h.mT + r))
            gain = cov @ h.mT @ s_inv  # [Bc, S, M]
            ikh = eye - gain @ h
            cov_upd = symmetrise(ikh @ cov @ ikh.mT + gain @ r @ gain.mT)  # Joseph form
            miss_t = miss_c[t]
            if bool(miss_t.any()):
                gain = torch.where(miss_t[:, None, None], torch.zeros_like(gain), gain)
                cov = torch.where(miss_t[:, None, None], cov, cov_upd)
            else:
                cov = cov_upd
            gains[t], s_invs[t], logdets[t], fc[t] = gain, s_inv, logdet, cov
        if steady_from < t_sz:
            for buf in (pc, fc, gains, s_invs, logdets):
                buf[steady_from:] = buf[steady_from - 1]

        # 2) means: m_t = W_t m_{t-1} + c_t with W_t = (I - K_t H) A, c_t = (I - K_t H) b
        #    + K_t (z_t - d); the first step starts from the initial mean instead.
        zt = z.transpose(0, 1)  # [T, B, M]
        if index is not None:  # per-track views of the per-pattern quantities
            gains, s_invs, logdets = gains[:, index], s_invs[:, index], logdets[:, index]
        lmat = eye - gains @ h  # [T, Bc, S, S]
        kz = torch.einsum("tcsm,tbm->tbs", gains, zt - off_h) if gains.shape[1] == 1 else (
            gains @ (zt - off_h).unsqueeze(-1)
        ).squeeze(-1)
        c = kz + (lmat @ off_a.unsqueeze(-1)).squeeze(-1)  # [T, B, S]
        w = lmat @ a  # [T, Bc, S, S]
        fm = torch.empty(t_sz, b_sz, s, **kw)
        m0 = _expand_batch(p["initial_state_mean"], b_sz)
        fm[0] = _apply(lmat[0], m0) + kz[0]
        m = fm[0]
        if w.shape[1] == 1:
            wt = w[:, 0].mT.contiguous()
            for t in range(1, t_sz):
                m = torch.addmm(c[t], m, wt[t], out=fm[t])
        else:
            for t in range(1, t_sz):
                m = torch.baddbmm(c[t].unsqueeze(-1), w[t], m.unsqueeze(-1)).squeeze(-1)
                fm[t] = m
        pm = torch.empty_like(fm)
        no_loglik = torch.zeros(b_sz, **kw)
        if not (predicted or loglik):
            return KalmanPass(pm, pc, fm, fc, no_loglik, cov_index=index)
        pm[0] = m0
        if t_sz > 1:
            pm[1:] = fm[:-1] @ a.mT + off_a

        if not loglik:
            return KalmanPass(pm, pc, fm, fc, no_loglik, cov_index=index)
        # 3) log-likelihood of the observed rows, all steps at once
        innov = zt - pm @ h.mT - off_h  # [T, B, M]
        if s_invs.shape[1] == 1:
            quad = (torch.einsum("tmn,tbn->tbm", s_invs[:, 0], innov) * innov).sum(-1)
        else:
            quad = ((s_invs @ innov.unsqueeze(-1)).squeeze(-1) * innov).sum(-1)
        ll = -0.5 * (m_sz * math.log(2.0 * math.pi) + logdets + quad)  # [T, B]
        total = torch.where(missing.T, torch.zeros_like(ll), ll).sum(0)
        return KalmanPass(pm, pc, fm, fc, total, cov_index=index)

    def _backward(self, res: KalmanPass, p: dict[str, torch.Tensor]) -> KalmanPass:
        """Rauch-Tung-Striebel pass, filling the smoothed fields of ``res`` (time-major)."""
        a = p["transition_matrix"]
        fm, fc = res.filtered_means, res.filtered_covs
        pm, pc = res.predicted_means, res.predicted_covs
        t_sz, b_sz, s = fm.shape
        bc = fc.shape[1]
        sm = torch.empty_like(fm)
        sc = torch.empty_like(fc)
        sm[-1] = fm[-1]
        sc[-1] = fc[-1]
        gains = torch.empty(0, bc, s, s, dtype=fm.dtype, device=fm.device)
        if t_sz > 1:
            # G_t = P_f,t A^T P_p,t+1^{-1} for all t at once: solve P_p,t+1 G_t^T = A P_f,t
            rhs = a @ fc[:-1]
            sol, info = torch.linalg.solve_ex(pc[1:], rhs)
            if bool((info != 0).any()):
                sol = torch.linalg.pinv(pc[1:], hermitian=True) @ rhs
            gains = sol.mT  # [T-1, Bc, S, S]
            # means: m_s,t = G_t m_s,t+1 + (m_f,t - G_t m_p,t+1)
            if bc == 1 and res.cov_index is None:
                g = gains[:, 0]
                c = fm[:-1] - torch.einsum("tij,tbj->tbi", g, pm[1:])
                gt = g.mT.contiguous()
                m = sm[-1]
                for t in range(t_sz - 2, -1, -1):
                    m = torch.addmm(c[t], m, gt[t], out=sm[t])
            else:
                g_tr = res.per_track(gains)
                c = fm[:-1] - (g_tr @ pm[1:].unsqueeze(-1)).squeeze(-1)
                m = sm[-1]
                for t in range(t_sz - 2, -1, -1):
                    m = torch.baddbmm(c[t].unsqueeze(-1), g_tr[t], m.unsqueeze(-1)).squeeze(-1)
                    sm[t] = m
            cov = sc[-1]
            for t in range(t_sz - 2, -1, -1):
                g = gains[t]
                cov = symmetrise(fc[t] + g @ (cov - pc[t + 1]) @ g.mT)
                sc[t] = cov
        res.smoothed_means, res.smoothed_covs, res.smoother_gains = sm, sc, gains
        return res

    def _run(
        self, measurements: ArrayLike, mask: ArrayLike | None, smooth: bool,
        need_loglik: bool = False,
    ) -> tuple[KalmanPass, bool, bool, torch.Tensor, torch.Tensor]:
        z, missing, squeeze, as_numpy = prepare_measurements(measurements, self.n_dim_obs, mask)
        p = self._params_for(z.dtype, z.device, z.shape[0])
        res = self._forward(z, missing, p, predicted=smooth, loglik=need_loglik)
        if smooth:
            res = self._backward(res, p)
        return res, squeeze, as_numpy, z, missing

    # -- public API ---------------------------------------------------------------------
    @single_threaded
    def filter(self, measurements: ArrayLike, mask: ArrayLike | None = None) -> tuple[Any, Any]:
        """Filtered state distributions ``p(x_t | z_0..z_t)``.

        ``measurements`` ``[T, M]`` or ``[B, T, M]`` (NaN rows or ``mask`` True = missing;
        ``mask`` ``[T]``, ``[B, T]`` or the measurements' shape). Returns ``(means, covs)``:
        ``[T, S]``/``[B, T, S]`` and ``[T, S, S]``/``[B, T, S, S]``.
        """
        res, squeeze, as_numpy, z, _ = self._run(measurements, mask, smooth=False)
        means, covs = _batch_major(res.filtered_means, res.per_track(res.filtered_covs),
                                   z.shape[0])
        return finish(means, squeeze, as_numpy), finish(covs, squeeze, as_numpy)

    @single_threaded
    def smooth(self, measurements: ArrayLike, mask: ArrayLike | None = None) -> tuple[Any, Any]:
        """Rauch-Tung-Striebel smoothed distributions ``p(x_t | z_0..z_{T-1})``.

        ``measurements`` ``[T, M]`` or ``[B, T, M]`` (NaN rows or ``mask`` True = missing).
        Returns ``(means, covs)``: ``[T, S]``/``[B, T, S]`` and ``[T, S, S]``/``[B, T, S, S]``.
        Tracks of different lengths: pad the short ones with NaN rows at the end.
        """
        res, squeeze, as_numpy, z, _ = self._run(measurements, mask, smooth=True)
        assert res.smoothed_means is not None and res.smoothed_covs is not None
        means, covs = _batch_major(res.smoothed_means, res.per_track(res.smoothed_covs),
                                   z.shape[0])
        return finish(means, squeeze, as_numpy), finish(covs, squeeze, as_numpy)

    @single_threaded
    def loglikelihood(self, measurements: ArrayLike, mask: ArrayLike | None = None) -> Any:
        """Log-likelihood of the observed rows: a float for ``[T, M]``, ``[B]`` per track for
        ``[B, T, M]`` (numpy or torch following the measurements)."""
        res, squeeze, as_numpy, _, _ = self._run(measurements, mask, smooth=False,
                                                 need_loglik=True)
        if squeeze:
            return float(res.loglik[0]) if as_numpy else res.loglik[0]
        return finish(res.loglik, False, as_numpy)

    @single_threaded
    def filter_update(
        self, mean: ArrayLike, covariance: ArrayLike, measurement: ArrayLike | None = None
    ) -> tuple[Any, Any]:
        """One online step: predict from ``(mean [S] or [B, S], covariance [S, S] or
        [B, S, S])`` and correct with ``measurement`` ``[M]``/``[B, M]`` (None or NaN rows:
        predict only). Returns the new ``(mean, covariance)`` in the input's shapes."""
        as_numpy = not isinstance(mean, torch.Tensor)
        dtype = mean.dtype if isinstance(mean, torch.Tensor) else torch.float64
        device = mean.device if isinstance(mean, torch.Tensor) else torch.device("cpu")
        m = to_tensor("mean", mean, dtype, device)
        c = to_tensor("covariance", covariance, dtype, device)
        squeeze = m.ndim == 1
        m = m.reshape(-1, self.n_dim_state) if m.ndim in (1, 2) else m
        if m.ndim != 2 or m.shape[-1] != self.n_dim_state:
            raise ValueError(f"mean must be [S] or [B, S] with S={self.n_dim_state}")
        check_covariance("covariance", c, self.n_dim_state, allow_batch=True)
        c = c if c.ndim == 3 else c.unsqueeze(0)
        if measurement is None:
            z = torch.full((m.shape[0], 1, self.n_dim_obs), float("nan"), dtype=dtype)
            z = z.to(device)
        else:
            zt = to_tensor("measurement", measurement, dtype, device, allow_nan=True)
            z = zt.reshape(-1, 1, self.n_dim_obs)
        zz, missing, _, _ = prepare_measurements(z, self.n_dim_obs)
        p = self._params_for(dtype, device, m.shape[0])
        a, q = p["transition_matrix"], p["transition_covariance"]
        p["initial_state_mean"] = m @ a.mT + p["transition_offset"]
        p["initial_state_covariance"] = symmetrise(a @ c @ a.mT + q)
        res = self._forward(zz, missing, p)
        out_m = res.filtered_means[0]
        out_c = _expand_batch(res.per_track(res.filtered_covs)[0], m.shape[0])
        if squeeze:
            out_m, out_c = out_m[0], out_c[0]
        if as_numpy:
            return out_m.numpy(), out_c.numpy()
        return out_m, out_c

    def sample(
        self, n_timesteps: int, n_tracks: int | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``(states, measurements)`` from the model: ``[T, S], [T, M]`` or with a leading
        ``[B]`` when ``n_tracks`` is given. float64 numpy, from ``np.random.default_rng(seed)``."""
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        rng = np.random.default_rng(seed)
        b = 1 if n_tracks is None else int(n_tracks)
        p = {k: v.numpy() for k, v in self._p.items()}
        s, m = self.n_dim_state, self.n_dim_obs
        mu0 = np.broadcast_to(p["initial_state_mean"], (b, s))
        p0 = np.broadcast_to(p["initial_state_covariance"], (b, s, s))
        evals, evecs = np.linalg.eigh(p0)  # a square root that also works for singular P0
        root = evecs * np.sqrt(np.clip(evals, 0.0, None))[..., None, :]
        x = mu0 + (root @ rng.normal(size=(b, s, 1)))[..., 0]
        xs = np.empty((b, n_timesteps, s))
        zs = np.empty((b, n_timesteps, m))
        for t in range(n_timesteps):
            if t > 0:
                x = x @ p["transition_matrix"].T + p["transition_offset"] + rng.multivariate_normal(
                    np.zeros(s), p["transition_covariance"], size=b
                )
            xs[:, t] = x
            zs[:, t] = x @ p["observation_matrix"].T + p["observation_offset"] + (
                rng.multivariate_normal(np.zeros(m), p["observation_covariance"], size=b)
            )
        if n_tracks is None:
            return xs[0], zs[0]
        return xs, zs

    # -- EM -----------------------------------------------------------------------------
    @single_threaded
    def em(
        self,
        measurements: ArrayLike,
        n_iter: int = 10,
        em_vars: Iterable[str] | str | None = None,
        mask: ArrayLike | None = None,
    ) -> KalmanFilter:
        """Fit the parameters in ``em_vars`` by expectation-maximisation (pykalman's updates,
        in pykalman's order). ``em_vars``: names from :data:`PARAMETERS` (plural pykalman
        spellings accepted) or ``"all"``; default the noise covariances and the initial state.
        Batched measurements ``[B, T, M]`` pool the statistics of all tracks (shared
        parameters). ``self.loglikelihood_history`` holds the log-likelihood (summed over
        tracks) before each iteration and after the last. Returns ``self``.
        """
        if int(n_iter) < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        vars_ = self._parse_em_vars(em_vars) if em_vars is not None else self.em_vars
        z, missing, _, _ = prepare_measurements(measurements, self.n_dim_obs, mask)
        z, missing = z.to(torch.float64).cpu(), missing.cpu()
        b_sz = z.shape[0]
        for name in ("initial_state_mean", "initial_state_covariance"):
            if name in vars_ and self._p[name].ndim == (2 if name == "initial_state_mean" else 3):
                raise ValueError(f"em_vars: cannot fit a per-track {name}; give a shared one")
        history: list[float] = []
        for _ in range(int(n_iter)):
            p = self._params_for(torch.float64, torch.device("cpu"), b_sz)
            res = self._backward(self._forward(z, missing, p), p)
            history.append(float(res.loglik.sum()))
            self._m_step(z, missing, res, p, vars_)
        p = self._params_for(torch.float64, torch.device("cpu"), b_sz)
        history.append(float(self._forward(z, missing, p).loglik.sum()))
        self.loglikelihood_history = history
        return self

    def _m_step(
        self,
        z: torch.Tensor,
        missing: torch.Tensor,
        res: KalmanPass,
        p: dict[str, torch.Tensor],
        vars_: tuple[str, ...],
    ) -> None:
        assert res.smoothed_means is not None and res.smoothed_covs is not None
        assert res.smoother_gains is not None
        b_sz, t_sz, _ = z.shape
        ms = res.smoothed_means.transpose(0, 1)  # [B, T, S]
        ps = _expand_batch(res.per_track(res.smoothed_covs).transpose(0, 1), b_sz)
        gains = _expand_batch(res.per_track(res.smoother_gains).transpose(0, 1), b_sz)
        pair = ps[:, 1:] @ gains.mT  # Cov(x_{t+1}, x_t) [B, T-1, S, S]
        obs = (~missing).to(z.dtype)  # [B, T]
        n_obs = float(obs.sum())
        new: dict[str, torch.Tensor] = {}
        c = p["observation_matrix"]
        d = p["observation_offset"]
        if "observation_matrix" in vars_:
            res1 = torch.einsum("bt,bti,btj->ij", obs, z - d, ms)
            res2 = torch.einsum("bt,btij->ij", obs, ps)
            res2 = res2 + torch.einsum("bt,bti,btj->ij", obs, ms, ms)
            c = res1 @ torch.linalg.pinv(res2)
            new["observation_matrix"] = c
        if "observation_covariance" in vars_:
            err = z - ms @ c.mT - d
            rr = torch.einsum("bt,bti,btj->ij", obs, err, err)
            rr = rr + torch.einsum("bt,ik,btkl,jl->ij", obs, c, ps, c)
            new["observation_covariance"] = symmetrise(rr / n_obs if n_obs > 0 else rr)
        a = p["transition_matrix"]
        off = p["transition_offset"]
        n_tr = b_sz * (t_sz - 1)
        if "transition_matrix" in vars_ and t_sz > 1:
            res1 = (
                pair.sum((0, 1))
                + torch.einsum("bti,btj->ij", ms[:, 1:], ms[:, :-1])
                - torch.outer(off, ms[:, :-1].sum((0, 1)))
            )
            res2 = ps[:, :-1].sum((0, 1)) + torch.einsum("bti,btj->ij", ms[:, :-1], ms[:, :-1])
            a = res1 @ torch.linalg.pinv(res2)
            new["transition_matrix"] = a
        if "transition_covariance" in vars_ and t_sz > 1:
            err = ms[:, 1:] - ms[:, :-1] @ a.mT - off
            qq = (
                torch.einsum("bti,btj->ij", err, err)
                + (a @ ps[:, :-1] @ a.mT).sum((0, 1))
                + ps[:, 1:].sum((0, 1))
            )
            pa = (pair @ a.mT).sum((0, 1))
            qq = qq - pa - pa.mT
            new["transition_covariance"] = symmetrise(qq / n_tr)
        mu0 = p["initial_state_mean"][0]
        if "initial_state_mean" in vars_:
            mu0 = ms[:, 0].mean(0)
            new["initial_state_mean"] = mu0
        if "initial_state_covariance" in vars_:
            dev = ms[:, 0] - mu0
            new["initial_state_covariance"] = symmetrise(
                (ps[:, 0] + dev.unsqueeze(-1) * dev.unsqueeze(-2)).mean(0)
            )
        if "transition_offset" in vars_ and t_sz > 1:
            new["transition_offset"] = (ms[:, 1:] - ms[:, :-1] @ a.mT).sum((0, 1)) / n_tr
        if "observation_offset" in vars_:
            tot = torch.einsum("bt,bti->i", obs, z - ms @ c.mT)
            new["observation_offset"] = tot / n_obs if n_obs > 0 else torch.zeros_like(tot)
        self._p.update(new)
