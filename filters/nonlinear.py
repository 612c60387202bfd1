"""Extended and unscented Kalman filters for ``x_{t+1} = f(x_t[, u_t]) + w``, ``z_t = h(x_t) + v``.

``transition(x [B, S]) -> [B, S]`` (or ``transition(x, u [B, U])`` when controls are given)
and ``measure(x [B, S]) -> [B, M]`` are batched torch callables: a TaskModel's ``step`` and
``observe``, or a learned world model. Noise is additive Gaussian, ``w ~ N(0, Q)``,
``v ~ N(0, R)``. Conventions follow :class:`worldplan.filters.KalmanFilter`: the first measurement
observes the initial state ``N(x0, P0)``; NaN rows (or ``mask`` True) are missing and skipped;
measurements ``[T, M]`` or ``[B, T, M]``; numpy in -> float64 numpy out, torch in -> torch
out on the measurements' device and dtype. ``controls[:, t]`` drives the step ``t -> t+1``.

Length: the EKF and the UKF share the Gaussian filter's loop, checks and smoother; each
adds only its predict and update.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.func import jacrev, vmap

from worldplan.filters._common import (
    ArrayLike,
    check_covariance,
    finish,
    prepare_controls,
    prepare_measurements,
    single_threaded,
    symmetrise,
    to_tensor,
)

if TYPE_CHECKING:  # pragma: no cover
    from worldplan.envs.interface import TaskModel

log = logging.getLogger(__name__)

Transition = Callable[..., torch.Tensor]
Measure = Callable[[torch.Tensor], torch.Tensor]


def _call(fn: Callable[..., torch.Tensor], x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    return fn(x) if u is None else fn(x, u)


def _check_output(name: str, out: Any, batch: int, width: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != (batch, width):
        raise ValueError(f"{name} must map [B, S] to [B, {width}], got {list(out.shape)}")
    return out


def jacobian(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, u: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and Jacobian of a batched map: ``fn(x [B, S][, u [B, U]]) -> [B, O]`` gives
    ``([B, O], [B, O, S])``, by ``torch.func.jacrev`` vmapped over the batch.

    Falls back to differentiating ``fn(x).sum(0)`` (valid because tracks are independent)
    when ``fn`` cannot run under ``vmap``.
    """

    def single(xi: torch.Tensor, ui: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = _call(fn, xi.unsqueeze(0), None if ui is None else ui.unsqueeze(0)).squeeze(0)
        return out, out

    try:
        if u is None:
            jac, val = vmap(jacrev(lambda xi: single(xi, None), has_aux=True))(x)
        else:
            jac, val = vmap(jacrev(single, has_aux=True))(x, u)
        return val, jac
    except Exception as exc:  # an op without a vmap rule: use the summed-batch Jacobian
        log.debug("vmap(jacrev) failed (%s); using the summed-batch Jacobian", exc)

    def summed(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = _call(fn, xb, u)
        return out.sum(0), out

    jac, val = jacrev(summed, has_aux=True)(x)  # jac [O, B, S]
    return val, jac.permute(1, 0, 2)


class _GaussianFilter:
    """Shared set-up, validation and the time loop of the EKF and the UKF."""

    def __init__(
        self,
        transition: Transition,
        measure: Measure,
        Q: ArrayLike,  # noqa: N803 - the conventional symbols
        R: ArrayLike,  # noqa: N803
        x0: ArrayLike,
        P0: ArrayLike,  # noqa: N803
    ) -> None:
        if not callable(transition):
            raise TypeError("transition must be callable: x [B, S] (, u [B, U]) -> [B, S]")
        if not callable(measure):
            raise TypeError("measure must be callable: x [B, S] -> [B, M]")
        self.transition, self.measure = transition, measure
        q = to_tensor("Q", Q)
        r = to_tensor("R", R)
        if q.ndim != 2:
            raise ValueError(f"Q must be [S, S], got {list(q.shape)}")
        if r.ndim != 2:
            raise ValueError(f"R must be [M, M], got {list(r.shape)}")
        self.state_dim, self.obs_dim = q.shape[0], r.shape[0]
        check_covariance("Q", q, self.state_dim)
        check_covariance("R", r, self.obs_dim)
        x = to_tensor("x0", x0)
        if x.ndim not in (1, 2) or x.shape[-1] != self.state_dim:
            raise ValueError(
                f"x0 must be [{self.state_dim}] or [B, {self.state_dim}] (S from Q), "
                f"got {list(x.shape)}"
            )
        p0 = to_tensor("P0", P0)
        check_covariance("P0", p0, self.state_dim, allow_batch=True)
        self.Q, self.R, self.x0, self.P0 = q, r, x, p0
        self.last_loglikelihood: torch.Tensor | None = None

    def _torch_loop(
        self, m: torch.Tensor, p: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None,
        q: torch.Tensor, r: torch.Tensor, n_obs: list[int], observed: torch.Tensor,
        means: torch.Tensor, covs: torch.Tensor, innovs: torch.Tensor, innov_covs: torch.Tensor,
        store: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Predict/update over time for all tracks, filling the time-major output buffers
        (and, for the smoother, ``store``'s predicted means/covariances and the cross
        covariances ``Cov(x_{t-1}, x_t)``)."""
        b_sz = z.shape[0]
        if store is not None:
            store["pm"][0], store["pc"][0] = m, p
        for t in range(z.shape[1]):
            if t > 0:
                m, p, cross = self._predict(m, p, None if u is None else u[:, t - 1], q)
                if store is not None:
                    store["pm"][t], store["pc"][t], store["cross"][t] = m, p, cross
            if n_obs[t] > 0:
                m_u, p_u, innovs[t], innov_covs[t] = self._update(m, p, z[:, t], r)
                if n_obs[t] == b_sz:
                    m, p = m_u, p_u
                else:
                    obs = observed[t]
                    m = torch.where(obs[:, None], m_u, m)
                    p = torch.where(obs[:, None, None], p_u, p)
            means[t], covs[t] = m, p

    def _use_numpy_core(self, z: torch.Tensor) -> bool:
        """Whether to run the loop in numpy (subclasses that support it, few tracks, CPU
        float64: there numpy's per-call cost on tiny arrays is a fraction of torch's)."""
        return False

    def _numpy_loop(self, *args: Any) -> None:
        raise NotImplementedError

    @classmethod
    def from_task_model(
        cls, model: TaskModel, x0: ArrayLike, P0: ArrayLike, **kwargs: Any  # noqa: N803
    ) -> _GaussianFilter:
        """A filter on a task's differentiable model: ``transition = model.step`` (the
        actions go in as ``controls``), ``measure = model.observe``, ``Q =
        model.process_noise``, ``R = model.measurement_noise``."""
        # lazy: importing worldplan.envs registers every environment (gymnasium, MuJoCo)
        from worldplan.envs.interface import Dynamics, Sensor, require

        require(model, Dynamics, Sensor, needed_by="this filter")
        return cls(model.step, model.observe, model.process_noise, model.measurement_noise,
                   x0, P0, **kwargs)

    # subclasses implement one predict and one update, batched over tracks
    def _predict(
        self, m: torch.Tensor, p: torch.Tensor, u: torch.Tensor | None, q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the predicted ``(mean, cov)`` and ``Cov(x_t, x_{t+1})`` ``[B, S, S]``."""
        raise NotImplementedError

    def _update(
        self, m: torch.Tensor, p: torch.Tensor, z: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(mean, cov, innovation [B, M], innovation covariance [B, M, M])``."""
        raise NotImplementedError

    def _run(
        self, measurements: ArrayLike, controls: ArrayLike | None, mask: ArrayLike | None,
        smooth: bool,
    ) -> tuple[Any, Any]:
        z, missing, squeeze, as_numpy = prepare_measurements(measurements, self.obs_dim, mask)
        b_sz, t_sz, m_sz = z.shape
        s_sz = self.state_dim
        kw = {"dtype": z.dtype, "device": z.device}
        u = prepare_controls(controls, b_sz, t_sz, z.dtype, z.device)
        q, r = self.Q.to(**kw), self.R.to(**kw)
        m = self.x0.to(**kw)
        m = m.expand(b_sz, -1) if m.ndim == 1 else m
        p = self.P0.to(**kw)
        p = p.expand(b_sz, -1, -1) if p.ndim == 2 else p
        if m.shape[0] != b_sz or p.shape[0] != b_sz:
            raise ValueError(
                f"x0/P0 are given for {m.shape[0]}/{p.shape[0]} tracks, measurements have {b_sz}"
            )
        means = torch.empty(t_sz, b_sz, s_sz, **kw)
        covs = torch.empty(t_sz, b_sz, s_sz, s_sz, **kw)
        innovs = torch.zeros(t_sz, b_sz, m_sz, **kw)
        innov_covs = torch.eye(m_sz, **kw).repeat(t_sz, b_sz, 1, 1)
        observed = (~missing).T  # [T, B]
        n_obs = observed.sum(1).tolist()  # host-side, decides the branch per step
        store = None
        if smooth:
            store = {"pm": torch.empty_like(means), "pc": torch.empty_like(covs),
                     "cross": torch.zeros_like(covs)}
        with torch.no_grad():
            if store is None and self._use_numpy_core(z):
                self._numpy_loop(m, p, z, u, q, r, n_obs, observed, means, covs, innovs,
                                 innov_covs)
            else:
                self._torch_loop(m, p, z, u, q, r, n_obs, observed, means, covs, innovs,
                                 innov_covs, store)
            self.last_loglikelihood = _innovation_loglik(innovs, innov_covs, observed)
            covs = symmetrise(covs)
            if store is not None:
                means, covs = _rts(means, covs, store["pm"], symmetrise(store["pc"]),
                                   store["cross"])
        means, covs = means.transpose(0, 1), covs.transpose(0, 1)
        return finish(means, squeeze, as_numpy), finish(covs, squeeze, as_numpy)

    @single_threaded
    def filter(
        self,
        measurements: ArrayLike,
        controls: ArrayLike | None = None,
        mask: ArrayLike | None = None,
    ) -> tuple[Any, Any]:
        """Filtered ``(means [B, T, S], covs [B, T, S, S])`` (no ``B`` for ``[T, M]`` input).

        ``controls`` ``[T-1, U]`` or ``[B, T-1, U]`` (``[.., T, U]`` accepted, last unused).
        The summed Gaussian log-likelihood of the innovations per track ends up in
        ``self.last_loglikelihood`` ``[B]``.
        """
        return self._run(measurements, controls, mask, smooth=False)

    @single_threaded
    def smooth(
        self,
        measurements: ArrayLike,
        controls: ArrayLike | None = None,
        mask: ArrayLike | None = None,
    ) -> tuple[Any, Any]:
        """Rauch-Tung-Striebel smoothed ``(means [B, T, S], covs [B, T, S, S])``: the
        extended RTS smoother (Jacobians) for the EKF, the unscented RTS smoother (sigma-point
        cross covariances) for the UKF. Same arguments as :meth:`filter`."""
        return self._run(measurements, controls, mask, smooth=True)


def _rts(
    fm: torch.Tensor, fc: torch.Tensor, pm: torch.Tensor, pc: torch.Tensor, cross: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass on time-major filtered ``fm`` ``[T, B, S]``/``fc``, predicted ``pm``/
    ``pc`` and cross covariances ``cross[t] = Cov(x_{t-1}, x_t)``: gains
    ``G_t = cross[t+1] pc[t+1]^-1``."""
    t_sz = fm.shape[0]
    sm, sc = fm.clone(), fc.clone()
    if t_sz < 2:
        return sm, sc
    rhs = cross[1:].mT  # solve pc G^T = cross^T
    sol, info = torch.linalg.solve_ex(pc[1:], rhs)
    if bool((info != 0).any()):
        sol = torch.linalg.pinv(pc[1:], hermitian=True) @ rhs
    gains = sol.mT  # [T-1, B, S, S]
    for t in range(t_sz - 2, -1, -1):
        g = gains[t]
        sm[t] = fm[t] + (g @ (sm[t + 1] - pm[t + 1]).unsqueeze(-1)).squeeze(-1)
        sc[t] = symmetrise(fc[t] + g @ (sc[t + 1] - pc[t + 1]) @ g.mT)
    return sm, sc


def _innovation_loglik(
    innov: torch.Tensor, innov_cov: torch.Tensor, observed: torch.Tensor
) -> torch.Tensor:
    """Summed Gaussian log-density of the observed innovations: ``[T, B, M]``,
    ``[T, B, M, M]``, ``[T, B]`` -> ``[B]``."""
    chol, info = torch.linalg.cholesky_ex(symmetrise(innov_cov))
    if bool((info != 0).any()):
        logdet = torch.linalg.slogdet(innov_cov).logabsdet
        quad = (innov * torch.linalg.lstsq(innov_cov, innov.unsqueeze(-1)).solution.squeeze(-1))
        quad = quad.sum(-1)
    else:
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        w = torch.linalg.solve_triangular(chol, innov.unsqueeze(-1), upper=False)
        quad = (w * w).sum((-2, -1))
    ll = -0.5 * (innov.shape[-1] * math.log(2 * math.pi) + logdet + quad)
    return torch.where(observed, ll, torch.zeros_like(ll)).sum(0)


def _failed(info: torch.Tensor) -> bool:
    """Whether a batched factorisation reported a failure (cheap for one track)."""
    return int(info) != 0 if info.numel() == 1 else bool((info != 0).any())


def _gain(s: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Kalman gain ``cross S^-1`` for innovation covariance ``s`` [B, M, M] and cross
    covariance ``cross`` [B, S, M] (Cholesky solve; pseudo-inverse if S is singular)."""
    chol, info = torch.linalg.cholesky_ex(s)
    if not _failed(info):
        return torch.cholesky_solve(cross.mT, chol).mT
    return cross @ torch.linalg.pinv(symmetrise(s), hermitian=True)


class ExtendedKalmanFilter(_GaussianFilter):
    """EKF with Jacobians from ``torch.func.jacrev`` (vmapped over tracks): the user never
    writes a Jacobian, and a learned world model can be the transition.

    Arguments: ``transition(x [B, S][, u [B, U]]) -> [B, S]``, ``measure(x [B, S]) -> [B, M]``,
    ``Q`` ``[S, S]`` process noise, ``R`` ``[M, M]`` measurement noise, ``x0`` ``[S]`` or
    ``[B, S]`` and ``P0`` ``[S, S]`` or ``[B, S, S]`` the initial state distribution.
    The covariance update is in Joseph form and symmetrised.
    """

    def _predict(
        self, m: torch.Tensor, p: torch.Tensor, u: torch.Tensor | None, q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m_new, f = jacobian(self.transition, m, u)
        _check_output("transition", m_new, m.shape[0], self.state_dim)
        f = f.detach()
        cross = p @ f.mT
        return m_new.detach(), symmetrise(f @ cross + q), cross

    def _update(
        self, m: torch.Tensor, p: torch.Tensor, z: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_hat, h = jacobian(self.measure, m)
        _check_output("measure", z_hat, m.shape[0], self.obs_dim)
        s = symmetrise(h @ p @ h.mT + r)
        gain = _gain(s, p @ h.mT)
        innov = (z - z_hat).detach()
        m_new = m + (gain @ innov.unsqueeze(-1)).squeeze(-1)
        ikh = torch.eye(self.state_dim, dtype=m.dtype, device=m.device) - gain @ h
        p_new = symmetrise(ikh @ p @ ikh.mT + gain @ r @ gain.mT)
        return m_new.detach(), p_new.detach(), innov, s.detach()


class UnscentedKalmanFilter(_GaussianFilter):
    """UKF with scaled sigma points (Van der Merwe): ``2S + 1`` points at
    ``m +- sqrt((S + lambda) P)`` with ``lambda = alpha^2 (S + kappa) - S``; mean weights
    ``lambda / (S + lambda)`` and ``1 / (2 (S + lambda))``, covariance weight of the centre
    point plus ``1 - alpha^2 + beta``. Same interface as :class:`ExtendedKalmanFilter`.

    Defaults ``alpha=1, beta=2, kappa=0`` keep every weight non-negative (robust); smaller
    ``alpha`` pulls the points towards the mean. Sigma points are redrawn from the predicted
    distribution before the update (additive noise).
    """

    def __init__(
        self,
        transition: Transition,
        measure: Measure,
        Q: ArrayLike,  # noqa: N803
        R: ArrayLike,  # noqa: N803
        x0: ArrayLike,
        P0: ArrayLike,  # noqa: N803
        alpha: float = 1.0,
        beta: float = 2.0,
        kappa: float = 0.0,
    ) -> None:
        super().__init__(transition, measure, Q, R, x0, P0)
        n = self.state_dim
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be positive, got {alpha}")
        lam = alpha**2 * (n + kappa) - n
        if n + lam <= 0:
            raise ValueError(f"kappa={kappa} with alpha={alpha} gives S + lambda <= 0")
        self.alpha, self.beta, self.kappa, self._scale = alpha, beta, kappa, n + lam
        wm = torch.full((2 * n + 1,), 1.0 / (2 * (n + lam)), dtype=torch.float64)
        wm[0] = lam / (n + lam)
        wc = wm.clone()
        wc[0] = wm[0] + (1 - alpha**2 + beta)
        self.wm, self.wc = wm, wc
        self._cache_key: tuple[torch.dtype, torch.device] | None = None
        self._cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = (wm, wc, wc)
        eye = torch.eye(n, dtype=torch.float64)
        self._select = torch.cat([torch.zeros(1, n, dtype=torch.float64), eye, -eye])  # [K, S]

    def _offsets(self, p: torch.Tensor) -> torch.Tensor:
        """``[B, S, S] -> [B, 2S + 1, S]``: sigma points minus the mean."""
        scaled = self._scale * p
        chol, info = torch.linalg.cholesky_ex(scaled)
        if _failed(info):  # not numerically PD: symmetric square root instead
            evals, evecs = torch.linalg.eigh(symmetrise(scaled))
            chol = evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)
        cols = chol.mT  # row j = column j of the square root
        return torch.cat([torch.zeros_like(cols[:, :1]), cols, -cols], dim=1)

    def _cast(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean weights ``[K, 1]``, covariance weights ``[K, 1]`` and the selection matrix
        in the dtype/device of ``like`` (cached)."""
        key = (like.dtype, like.device)
        if self._cache_key != key:
            self._cached = (self.wm.to(like).unsqueeze(-1), self.wc.to(like).unsqueeze(-1),
                            self._select.to(like))
            self._cache_key = key
        return self._cached

    def sigma_points(self, m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``[B, S], [B, S, S] -> [B, 2S + 1, S]`` scaled sigma points."""
        return m.unsqueeze(1) + self._offsets(p)

    def _propagate(
        self, fn: Callable[..., torch.Tensor], pts: torch.Tensor, u: torch.Tensor | None,
        name: str, width: int,
    ) -> torch.Tensor:
        b_sz, k, s = pts.shape
        uu = None if u is None else u.repeat_interleave(k, dim=0)
        out = _call(fn, pts.reshape(b_sz * k, s), uu)
        return _check_output(name, out, b_sz * k, width).reshape(b_sz, k, width)

    def _predict(
        self, m: torch.Tensor, p: torch.Tensor, u: torch.Tensor | None, q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        offsets = self._offsets(p)
        pts = self._propagate(self.transition, m.unsqueeze(1) + offsets, u, "transition",
                              self.state_dim)
        wm, wc, _ = self._cast(pts)
        mean = (wm * pts).sum(1)  # [B, S]
        wdev = wc * (pts - mean.unsqueeze(1))
        cross = torch.bmm(offsets.mT, wdev)  # sum_k wc (x_k - m)(f(x_k) - mean)^T
        # symmetric up to rounding; stored covariances are symmetrised at the end
        return mean, torch.baddbmm(q, (pts - mean.unsqueeze(1)).mT, wdev), cross

    def _update(
        self, m: torch.Tensor, p: torch.Tensor, z: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        offsets = self._offsets(p)
        zpts = self._propagate(self.measure, m.unsqueeze(1) + offsets, None, "measure",
                               self.obs_dim)
        wm, wc, _ = self._cast(zpts)
        z_hat = (wm * zpts).sum(1)  # [B, M]
        dz = zpts - z_hat.unsqueeze(1)
        wdz = wc * dz  # [B, K, M]
        s = torch.baddbmm(r, dz.mT, wdz)
        gain = _gain(s, torch.bmm(offsets.mT, wdz))  # cross covariance sum_k wc dx dz^T
        innov = z - z_hat
        m_new = torch.baddbmm(m.unsqueeze(-1), gain, innov.unsqueeze(-1)).squeeze(-1)
        # left unsymmetrised per step: the next sigma points read only its lower triangle
        # (Cholesky), and filter() symmetrises every stored covariance at the end
        p_new = p - torch.bmm(torch.bmm(gain, s), gain.mT)
        return m_new, p_new, innov, s

    # -- numpy core: the same arithmetic for a few tracks on the CPU in float64 -------------
    def _use_numpy_core(self, z: torch.Tensor) -> bool:
        return z.device.type == "cpu" and z.dtype == torch.float64 and z.shape[0] <= 4

    def _np_offsets(self, p: np.ndarray) -> np.ndarray:
        scaled = self._scale * p
        try:
            chol = np.linalg.cholesky(scaled)
        except np.linalg.LinAlgError:  # not numerically PD: symmetric square root instead
            evals, evecs = np.linalg.eigh(0.5 * (scaled + scaled.swapaxes(-1, -2)))
            chol = evecs * np.sqrt(np.clip(evals, 0, None))[..., None, :]
        cols = chol.swapaxes(-1, -2)
        return np.concatenate([np.zeros((cols.shape[0], 1, cols.shape[2])), cols, -cols], axis=1)

    def _np_call(
        self, fn: Callable[..., torch.Tensor], pts: np.ndarray, u: np.ndarray | None, name: str,
        width: int,
    ) -> np.ndarray:
        b_sz, k, s = pts.shape
        x = torch.from_numpy(pts.reshape(b_sz * k, s))
        uu = None if u is None else torch.from_numpy(np.repeat(u, k, axis=0))
        out = _check_output(name, _call(fn, x, uu), b_sz * k, width)
        return out.detach().numpy().reshape(b_sz, k, width)

    def _numpy_loop(
        self, m_t: torch.Tensor, p_t: torch.Tensor, z_t: torch.Tensor, u_t: torch.Tensor | None,
        q_t: torch.Tensor, r_t: torch.Tensor, n_obs: list[int], observed: torch.Tensor,
        means: torch.Tensor, covs: torch.Tensor, innovs: torch.Tensor, innov_covs: torch.Tensor,
    ) -> None:
        """The filter loop of :meth:`filter` in numpy; fills the (numpy views of the) output
        buffers in place."""
        m, p = m_t.numpy().copy(), p_t.numpy().copy()
        z, q, r = z_t.numpy(), q_t.numpy(), r_t.numpy()
        u = None if u_t is None else u_t.numpy()
        obs = observed.numpy()
        out_m, out_c, out_v, out_s = means.numpy(), covs.numpy(), innovs.numpy(), innov_covs.numpy()
        wm = self.wm.numpy()  # [K]: wm @ pts [B, K, S] -> [B, S]
        wc = self.wc.numpy()[:, None]
        b_sz = z.shape[0]
        for t in range(z.shape[1]):
            if t > 0:
                pts = self._np_call(self.transition, m[:, None] + self._np_offsets(p),
                                    None if u is None else u[:, t - 1], "transition",
                                    self.state_dim)
                m = wm @ pts
                dev = pts - m[:, None]
                p = dev.swapaxes(-1, -2) @ (wc * dev) + q
            if n_obs[t] > 0:
                offsets = self._np_offsets(p)
                zpts = self._np_call(self.measure, m[:, None] + offsets, None, "measure",
                                     self.obs_dim)
                z_hat = wm @ zpts
                dz = zpts - z_hat[:, None]
                wdz = wc * dz
                s = dz.swapaxes(-1, -2) @ wdz + r
                cross = offsets.swapaxes(-1, -2) @ wdz
                if s.shape[-1] == 1 and bool((s > 0).all()):  # scalar measurement
                    gain = cross / s
                else:
                    try:
                        gain = np.linalg.solve(s, cross.swapaxes(-1, -2)).swapaxes(-1, -2)
                    except np.linalg.LinAlgError:
                        gain = cross @ np.linalg.pinv(s, hermitian=True)
                innov = z[:, t] - z_hat
                m_u = m + (gain @ innov[..., None])[..., 0]
                p_u = p - gain @ s @ gain.swapaxes(-1, -2)
                out_v[t], out_s[t] = innov, s
                if n_obs[t] == b_sz:
                    m, p = m_u, p_u
                else:
                    m = np.where(obs[t][:, None], m_u, m)
                    p = np.where(obs[t][:, None, None], p_u, p)
            out_m[t], out_c[t] = m, p
