"""Bootstrap particle filter, batched over tracks: particles ``[B, N, S]``, log-weights ``[B, N]``.

Model: ``x_{t+1} = transition(x_t[, u_t]) + w``, ``w ~ N(0, Q)``; the measurement density is
Gaussian ``N(measure(x), R)`` or any ``log_likelihood(particles [B, N, S], z [B, M]) -> [B, N]``.
Conventions as in :class:`worldplan.filters.KalmanFilter`: the first measurement weights the initial
particles; NaN rows (or ``mask`` True) are missing (predict only). Every random draw comes
from a ``torch.Generator`` seeded with ``seed``, so a call is reproducible.

Length: the bootstrap filter, its four resamplers, degeneracy recovery and the batched
per-track bookkeeping share one step loop and its checks.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from worldplan.filters._common import (
    ArrayLike,
    check_covariance,
    finish,
    prepare_controls,
    prepare_measurements,
    single_threaded,
    to_tensor,
)

if TYPE_CHECKING:  # pragma: no cover
    from worldplan.envs.interface import TaskModel

log = logging.getLogger(__name__)

RESAMPLERS = ("systematic", "stratified", "residual", "multinomial")
DEGENERACY_RECOVERIES = ("reset", "reinitialise", "raise")


class ParticleDegeneracyWarning(RuntimeWarning):
    """All particle weights of a track vanished; the message says which recovery was used."""


class ParticleDegeneracyError(ValueError):
    """All particle weights of a track vanished and ``on_degenerate='raise'`` was asked."""


# -- resampling: weights [B, N] (rows sum to 1) -> ancestor indices [B, N] ---------------
def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = torch.cumsum(weights, dim=-1)
    cdf[..., -1] = 1.0 + 1e-6  # guard against the sum rounding below the last draw
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)
    return idx.clamp_(max=weights.shape[-1] - 1)


def systematic_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform per track, ``N`` evenly spaced draws ``u_k = (k + U) / N``.

    Computed without a search: particle ``i`` covers the draws ``k`` in
    ``[c_{i-1}, c_i)`` with ``c_i = #{k : u_k < cdf_i} = ceil(N cdf_i - U)`` (clamped), so
    the ancestor of draw ``k`` is ``#{i : c_i <= k}``: a scatter of ones and a cumulative sum.
    """
    b, n = weights.shape
    u0 = torch.rand(b, 1, generator=generator, dtype=weights.dtype, device=weights.device)
    # in place on the fresh cumulative sum: the same values as ceil(cdf * n - u0), no
    # temporaries
    ends = torch.cumsum(weights, dim=-1).mul_(n).sub_(u0).ceil_().clamp_(0, n).long()
    marks = torch.zeros(b, n + 1, dtype=torch.long, device=weights.device)
    ones = torch.ones((), dtype=torch.long, device=weights.device).expand(b, n - 1)
    marks.scatter_add_(1, ends[:, :-1], ones)  # [B, N-1] ends, non-decreasing
    return torch.cumsum(marks[:, :n], dim=-1).clamp_(max=n - 1)


def stratified_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform per stratum: ``(k + U_k) / N``."""
    b, n = weights.shape
    u = torch.rand(b, n, generator=generator, dtype=weights.dtype, device=weights.device)
    k = torch.arange(n, dtype=weights.dtype, device=weights.device)
    return _inverse_cdf(weights, (k + u) / n)


def multinomial_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``N`` independent draws from the weights (uniforms through the inverse CDF)."""
    b, n = weights.shape
    u = torch.rand(b, n, generator=generator, dtype=weights.dtype, device=weights.device)
    return _inverse_cdf(weights, u)


def residual_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``floor(N w_i)`` copies of each particle, the rest drawn from the residual weights."""
    b, n = weights.shape
    counts = torch.floor(weights * n)
    total = counts.sum(-1, keepdim=True)  # [B, 1]
    residual = weights * n - counts
    rsum = residual.sum(-1, keepdim=True)
    residual = torch.where(rsum > 0, residual / rsum.clamp_min(1e-300), torch.full_like(
        residual, 1.0 / n))
    k = torch.arange(n, dtype=weights.dtype, device=weights.device).expand(b, n)
    # deterministic part: position k takes the particle whose cumulative count exceeds k
    det = torch.searchsorted(torch.cumsum(counts, -1), k.contiguous(), right=True)
    det = det.clamp_(max=n - 1)
    rand = multinomial_resample(residual, generator)
    return torch.where(k < total, det, rand)


_RESAMPLE_FN: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "systematic": systematic_resample,
    "stratified": stratified_resample,
    "residual": residual_resample,
    "multinomial": multinomial_resample,
}


def _any(flags: torch.Tensor) -> bool:
    return bool(flags) if flags.numel() == 1 else bool(flags.any())


def _randn(shape: Any, gen: torch.Generator, kw: dict[str, Any]) -> torch.Tensor:
    """Standard normals; float64 ones are drawn in float32 and widened (4x faster on CPU,
    and the noise needs no more precision)."""
    if kw["dtype"] == torch.float64:
        return torch.randn(shape, generator=gen, device=kw["device"]).to(torch.float64)
    return torch.randn(shape, generator=gen, **kw)


def _sqrt_psd(cov: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` with ``L L^T = cov`` for a PSD (possibly singular) matrix."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return chol
    evals, evecs = torch.linalg.eigh(cov)
    return evecs * evals.clamp_min(0).sqrt()


def weighted_mean_cov(
    particles: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, N, S]``, normalised ``[B, N]`` -> mean ``[B, S]``, covariance ``[B, S, S]``."""
    w = weights.unsqueeze(1)  # [B, 1, N]
    mean = torch.bmm(w, particles).squeeze(1)
    dev = particles - mean.unsqueeze(1)
    cov = torch.bmm(dev.mT * w, dev)
    return mean, 0.5 * (cov + cov.mT)


class ParticleFilter:
    """Bootstrap particle filter, batched over tracks, with log-weights.

    Arguments:

    - ``transition(x [B*N, S][, u [B*N, U]]) -> [B*N, S]``: the deterministic part of the
      dynamics; ``Q`` ``[S, S]`` the additive process noise sampled for each particle.
    - ``measure(x) -> [B*N, M]`` and ``R`` ``[M, M]`` for a Gaussian measurement density,
      or ``log_likelihood(particles [B, N, S], z [B, M]) -> [B, N]`` for any other (a NaN
      log-likelihood counts as -inf).
    - ``x0`` ``[S]``/``[B, S]``, ``P0`` ``[S, S]``: the initial Gaussian (or pass
      ``initial_particles`` to :meth:`filter`, e.g. a uniform prior over a map).
    - ``n_particles`` ``N``; ``resampling`` one of :data:`RESAMPLERS`; resample a track
      when its effective sample size ``1 / sum w^2`` falls below ``ess_threshold * N``.
    - ``roughening`` ``K``: after resampling add ``N(0, (K E N^{-1/S})^2)`` per dimension,
      ``E`` the particles' range in that dimension (Gordon et al. 1993); 0 disables it.
    - ``on_degenerate``: what to do when every weight of a track vanishes (all
      log-likelihoods -inf): ``"reset"`` ignores that measurement and keeps the particles
      with uniform weights, ``"reinitialise"`` redraws them from the initial distribution,
      ``"raise"`` raises :class:`ParticleDegeneracyError`. The first two emit a
      :class:`ParticleDegeneracyWarning` naming the tracks, the step and the recovery.
    """

    def __init__(
        self,
        transition: Callable[..., torch.Tensor],
        measure: Callable[[torch.Tensor], torch.Tensor] | None = None,
        Q: ArrayLike | None = None,  # noqa: N803
        R: ArrayLike | None = None,  # noqa: N803
        x0: ArrayLike | None = None,
        P0: ArrayLike | None = None,  # noqa: N803
        n_particles: int = 1000,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        roughening: float = 0.0,
        log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        on_degenerate: str = "reset",
        seed: int = 0,
    ) -> None:
        if not callable(transition):
            raise TypeError("transition must be callable: x [B*N, S] (, u) -> [B*N, S]")
        if log_likelihood is None and (measure is None or R is None):
            raise ValueError("give either log_likelihood, or measure together with R")
        if log_likelihood is not None and not callable(log_likelihood):
            raise TypeError("log_likelihood must be callable: (particles, z) -> [B, N]")
        if measure is not None and not callable(measure):
            raise TypeError("measure must be callable: x [B*N, S] -> [B*N, M]")
        if Q is None:
            raise ValueError("Q (process noise covariance [S, S]) is required")
        if resampling not in RESAMPLERS:
            raise ValueError(
                f"resampling must be one of {', '.join(RESAMPLERS)}, got {resampling!r}"
            )
        if on_degenerate not in DEGENERACY_RECOVERIES:
            raise ValueError(
                f"on_degenerate must be one of {', '.join(DEGENERACY_RECOVERIES)}, "
                f"got {on_degenerate!r}"
            )
        if int(n_particles) < 2:
            raise ValueError(f"n_particles must be >= 2, got {n_particles}")
        if not 0.0 <= float(ess_threshold) <= 1.0:
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
        if not (float(roughening) >= 0.0 and math.isfinite(roughening)):
            raise ValueError(f"roughening must be >= 0, got {roughening}")
        q = to_tensor("Q", Q)
        if q.ndim != 2:
            raise ValueError(f"Q must be [S, S], got {list(q.shape)}")
        self.state_dim = q.shape[0]
        check_covariance("Q", q, self.state_dim)
        self.Q = q
        self.R: torch.Tensor | None = None
        self.obs_dim: int | None = None
        if R is not None:
            r = to_tensor("R", R)
            if r.ndim != 2:
                raise ValueError(f"R must be [M, M], got {list(r.shape)}")
            check_covariance("R", r, r.shape[0])
            if bool((torch.linalg.eigvalsh(r) <= 0).any()):
                raise ValueError("R must be positive definite for a Gaussian likelihood")
            self.R, self.obs_dim = r, r.shape[0]
        self.x0 = None if x0 is None else to_tensor("x0", x0)
        self.P0 = None if P0 is None else to_tensor("P0", P0)
        x0_bad = self.x0 is not None and (
            self.x0.ndim not in (1, 2) or self.x0.shape[-1] != self.state_dim
        )
        if x0_bad:
            raise ValueError(f"x0 must be [{self.state_dim}] or [B, {self.state_dim}]")
        if self.P0 is not None:
            check_covariance("P0", self.P0, self.state_dim)
        self.transition, self.measure, self.log_likelihood = transition, measure, log_likelihood
        self.n_particles = int(n_particles)
        self.resampling = resampling
        self.ess_threshold = float(ess_threshold)
        self.roughening = float(roughening)
        self.on_degenerate = on_degenerate
        self.seed = int(seed)
        # filled by filter()
        self.ess: torch.Tensor | None = None  # [B, T]
        self.resampled: torch.Tensor | None = None  # [B, T] bool
        self.last_loglikelihood: torch.Tensor | None = None  # [B]
        self.particle_history: torch.Tensor | None = None  # [B, T, N, S]
        self.weight_history: torch.Tensor | None = None  # [B, T, N]
        self.degenerate_steps: list[tuple[int, list[int]]] = []

    @classmethod
    def from_task_model(
        cls, model: TaskModel, x0: ArrayLike, P0: ArrayLike, **kwargs: Any  # noqa: N803
    ) -> ParticleFilter:
        """A bootstrap filter on a task's model: ``transition = model.step`` (actions as
        ``controls``), ``measure = model.observe``, ``Q = model.process_noise``,
        ``R = model.measurement_noise``."""
        # lazy: importing worldplan.envs registers every environment (gymnasium, MuJoCo)
        from worldplan.envs.interface import Dynamics, Sensor, require

        require(model, Dynamics, Sensor, needed_by="a particle filter")
        return cls(model.step, model.observe, model.process_noise, model.measurement_noise,
                   x0, P0, **kwargs)

    # -- pieces ---------------------------------------------------------------------------
    def _initial(
        self, b: int, gen: torch.Generator, kw: dict[str, Any], tracks: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.x0 is None or self.P0 is None:
            raise ValueError("x0 and P0 are needed unless initial_particles is given")
        x0 = self.x0.to(**kw)
        x0 = x0.expand(b, -1) if x0.ndim == 1 else x0
        if x0.shape[0] != b:
            raise ValueError(f"x0 is given for {x0.shape[0]} tracks, measurements have {b}")
        if tracks is not None:
            x0 = x0[tracks]
        chol = _sqrt_psd(self.P0.to(**kw))
        eps = _randn((x0.shape[0], self.n_particles, self.state_dim), gen, kw)
        return x0.unsqueeze(1) + eps @ chol.mT

    def _loglik(self, particles: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, n, s = particles.shape
        if self.log_likelihood is not None:
            ll = self.log_likelihood(particles, z)
            if not isinstance(ll, torch.Tensor) or ll.shape != (b, n):
                raise ValueError(f"log_likelihood must return [B, N] = [{b}, {n}]")
        else:
            assert self.measure is not None and self.R is not None
            zh = self.measure(particles.reshape(b * n, s))
            if not isinstance(zh, torch.Tensor) or zh.shape != (b * n, self.obs_dim):
                raise ValueError(f"measure must map [B*N, S] to [B*N, {self.obs_dim}]")
            r = self.R.to(particles)
            chol = torch.linalg.cholesky(r)
            v = z.unsqueeze(1) - zh.reshape(b, n, -1)  # [B, N, M]
            w = torch.linalg.solve_triangular(chol, v.reshape(-1, v.shape[-1]).T, upper=False)
            quad = (w * w).sum(0).reshape(b, n)
            logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
            ll = -0.5 * (quad + logdet + r.shape[0] * math.log(2 * math.pi))
        return ll

    def _roughen(
        self, particles: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        b, n, s = particles.shape
        spread = particles.amax(1) - particles.amin(1)  # [B, S]
        sigma = self.roughening * spread * n ** (-1.0 / s)
        noise = _randn(particles.shape, gen, {"dtype": particles.dtype,
                                              "device": particles.device})
        return particles + noise * sigma.unsqueeze(1)

    # -- main loop --------------------------------------------------------------------------
    @single_threaded
    def filter(
        self,
        measurements: ArrayLike,
        controls: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        initial_particles: ArrayLike | None = None,
        keep_history: bool = False,
        seed: int | None = None,
    ) -> tuple[Any, Any]:
        """Weighted mean ``[B, T, S]`` and covariance ``[B, T, S, S]`` of the particles after
        each measurement (no ``B`` for ``[T, M]`` input).

        ``initial_particles`` ``[N, S]`` or ``[B, N, S]`` replaces the Gaussian ``x0, P0``.
        ``keep_history`` stores ``particle_history`` ``[B, T, N, S]`` and ``weight_history``
        ``[B, T, N]`` (after weighting, before resampling). Diagnostics afterwards: ``ess``
        ``[B, T]``, ``resampled`` ``[B, T]``, ``last_loglikelihood`` ``[B]`` (the particle
        estimate of log p(z)), ``degenerate_steps``.
        """
        z, missing, squeeze, as_numpy = prepare_measurements(measurements, self.obs_dim, mask)
        b, t_sz, _ = z.shape
        n, s = self.n_particles, self.state_dim
        kw: dict[str, Any] = {"dtype": z.dtype, "device": z.device}
        gen = torch.Generator(device=z.device)
        gen.manual_seed(self.seed if seed is None else int(seed))
        u = prepare_controls(controls, b, t_sz, z.dtype, z.device)
        q_chol = _sqrt_psd(self.Q.to(**kw))
        # diagonal noise (the common case): scale instead of a skinny matmul (3x faster)
        q_diag = torch.diagonal(q_chol) if bool((q_chol == torch.diag(torch.diagonal(
            q_chol))).all()) else None
        if q_diag is not None and bool((q_diag == q_diag[0]).all()):
            # isotropic: the same products with a 0-dim scale, 5x faster than broadcasting
            # a length-S vector along the last dimension
            q_diag = q_diag[0].clone()
        if initial_particles is not None:
            parts = to_tensor("initial_particles", initial_particles, **kw)
            if parts.ndim == 2:
                parts = parts.unsqueeze(0).expand(b, -1, -1)
            if parts.shape != (b, n, s):
                raise ValueError(
                    f"initial_particles must be [N, S] or [B, N, S] = [{b}, {n}, {s}], "
                    f"got {list(parts.shape)}"
                )
            parts = parts.clone()
        else:
            parts = self._initial(b, gen, kw)
        init_parts = parts.clone() if self.on_degenerate == "reinitialise" else None
        log_n = math.log(n)
        uniform = torch.full((b, n), -log_n, **kw)  # never written in place: shared
        logw = uniform
        means = torch.empty(t_sz, b, s, **kw)
        covs = torch.empty(t_sz, b, s, s, **kw)
        ess_all = torch.empty(t_sz, b, **kw)
        res_all = torch.zeros(t_sz, b, dtype=torch.bool, device=z.device)
        loglik = torch.zeros(b, **kw)
        hist_p = torch.empty(t_sz, b, n, s, **kw) if keep_history else None
        hist_w = torch.empty(t_sz, b, n, **kw) if keep_history else None
        self.degenerate_steps = []
        resample = _RESAMPLE_FN[self.resampling]
        observed = (~missing).T  # [T, B]
        n_obs = observed.sum(1).tolist()  # host-side: skip masking when every track observes
        for t in range(t_sz):
            if t > 0:
                flat = parts.reshape(b * n, s)
                if u is None:
                    uu = None
                elif b == 1:  # a stride-0 view, no copy
                    uu = u[0, t - 1].expand(n, -1)
                else:
                    uu = u[:, t - 1, None].expand(b, n, -1).reshape(b * n, -1)
                moved = self.transition(flat) if uu is None else self.transition(flat, uu)
                if not isinstance(moved, torch.Tensor) or moved.shape != (b * n, s):
                    raise ValueError(f"transition must map [B*N, S] to [B*N, {s}]")
                noise = _randn((b * n, s), gen, kw)
                # one fused op: moved + noise * sqrt(Q) (diagonal) or moved + noise @ L^T
                parts = (torch.addcmul(moved, noise, q_diag) if q_diag is not None
                         else torch.addmm(moved, noise, q_chol.mT)).reshape(b, n, s)
            w = None
            if n_obs[t] > 0:
                obs = observed[t] if n_obs[t] < b else None  # None: every track observes
                ll = self._loglik(parts, z[:, t])
                if obs is not None:
                    ll = torch.where(obs[:, None], ll, torch.zeros_like(ll))
                new = logw + ll
                # log-sum-exp by hand so that exp runs once: the shifted exponentials are
                # also the unnormalised weights; in place on fresh temporaries (no allocation)
                peak = new.amax(-1, keepdim=True)  # [B, 1]
                expo = torch.sub(new, peak).exp_()
                total = expo.sum(-1, keepdim=True)
                norm = (peak + torch.log(total)).squeeze(-1)  # [B]
                dead = ~torch.isfinite(norm)
                if _any(dead):  # NaN log-likelihoods count as -inf; then look again
                    new = torch.nan_to_num(new, nan=-math.inf, posinf=math.inf,
                                           neginf=-math.inf)
                    norm = torch.logsumexp(new, dim=-1)
                    dead = ~torch.isfinite(norm)
                    expo = None
                if _any(dead):
                    parts, new, norm = self._recover(t, dead, parts, logw, new, norm,
                                                     init_parts)
                    seen = ~dead if obs is None else obs & ~dead
                    loglik = loglik + torch.where(seen, norm, torch.zeros_like(norm))
                elif obs is not None:
                    loglik = loglik + torch.where(obs, norm, torch.zeros_like(norm))
                else:
                    loglik = loglik + norm
                logw = new.sub_(norm.unsqueeze(-1))  # new is this step's own tensor
                if expo is not None:
                    w = expo.div_(total)
            if w is None:
                w = torch.exp(logw)
            means[t], covs[t] = weighted_mean_cov(parts, w)
            if keep_history:
                hist_p[t], hist_w[t] = parts, w  # type: ignore[index]
            ess = torch.linalg.vecdot(w, w).reciprocal_()
            ess_all[t] = ess
            need = ess < self.ess_threshold * n
            n_need = int(need) if b == 1 else int(need.sum())  # one track: no reduction
            if n_need > 0:
                idx = resample(w, gen)
                if b == 1:  # a row gather is cheaper than gather's per-element indexing
                    new_parts = parts[0].index_select(0, idx[0]).unsqueeze(0)
                else:
                    new_parts = torch.gather(parts, 1, idx.unsqueeze(-1).expand(-1, -1, s))
                if self.roughening > 0:
                    new_parts = self._roughen(new_parts, gen)
                if n_need == b:
                    parts, logw = new_parts, uniform
                else:
                    parts = torch.where(need[:, None, None], new_parts, parts)
                    logw = torch.where(need[:, None], uniform, logw)
                res_all[t] = need
        self.ess, self.resampled = ess_all.T, res_all.T
        self.last_loglikelihood = loglik
        self.particle_history = None if hist_p is None else hist_p.transpose(0, 1)
        self.weight_history = None if hist_w is None else hist_w.transpose(0, 1)
        means, covs = means.transpose(0, 1), covs.transpose(0, 1)
        return finish(means, squeeze, as_numpy), finish(covs, squeeze, as_numpy)

    def _recover(
        self,
        t: int,
        dead: torch.Tensor,
        parts: torch.Tensor,
        logw: torch.Tensor,
        new: torch.Tensor,
        norm: torch.Tensor,
        init_parts: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tracks = torch.nonzero(dead).flatten().tolist()
        self.degenerate_steps.append((t, tracks))
        if self.on_degenerate == "raise":
            raise ParticleDegeneracyError(
                f"all particle weights vanished at step {t} for tracks {tracks} (every "
                "particle has zero likelihood for the measurement); use on_degenerate="
                "'reset' or 'reinitialise' to recover, or widen R / Q"
            )
        if self.on_degenerate == "reset":
            what = "measurement ignored, particles kept with uniform weights"
            new = torch.where(dead[:, None], torch.full_like(new, -math.log(new.shape[-1])), new)
        else:
            what = "particles reset to the initial (prior) particle set with uniform weights"
            assert init_parts is not None
            parts = torch.where(dead[:, None, None], init_parts, parts)
            new = torch.where(dead[:, None], torch.full_like(new, -math.log(new.shape[-1])), new)
        msg = (
            f"all particle weights vanished at step {t} for tracks {tracks[:10]}"
            f"{'...' if len(tracks) > 10 else ''}; recovery: {what}"
        )
        warnings.warn(msg, ParticleDegeneracyWarning, stacklevel=3)
        log.warning(msg)
        norm = torch.where(dead, torch.zeros_like(norm), norm)
        return parts, new, norm
