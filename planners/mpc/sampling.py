"""Sampling-based planners: the cross-entropy method (with the iCEM refinements) and MPPI.

Length: both planners write their candidates into preallocated buffers in the layout of
the base class's fast rollout and share the noise and clipping helpers here; each one's
buffered update sits next to the functional form it must equal (MPPI's ``_update``, what
``torch.compile`` traces), which is what keeps them one module.
"""

from __future__ import annotations

import logging
import math

import torch

from worldplan.planners.mpc.base import Planner, _check_int, _check_positive

log = logging.getLogger(__name__)

__all__ = ["CEM", "MPPI", "colored_noise"]


def colored_noise(beta: float, shape: tuple[int, ...], horizon: int, *,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise correlated in time with power spectrum ``1/f^beta``.

    ``shape`` is the leading shape and must end with the action dimension: the result is
    ``[*shape[:-1], horizon, shape[-1]]``, each series with unit variance. ``beta = 0`` is
    white noise; iCEM uses ``beta`` around 2-3 (smooth, low-frequency exploration).
    """
    beta = float(beta)
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    *lead, a = shape
    if beta == 0:
        return torch.randn(*lead, horizon, a, generator=generator, device=device, dtype=dtype)
    freqs = torch.fft.rfftfreq(horizon, device=device).to(dtype)
    freqs[0] = 1.0 / horizon  # no infinite power at f = 0
    scale = freqs ** (-beta / 2)
    nf = freqs.shape[0]
    re = torch.randn(*lead, a, nf, generator=generator, device=device, dtype=dtype)
    im = torch.randn(*lead, a, nf, generator=generator, device=device, dtype=dtype)
    im[..., 0] = 0
    if horizon % 2 == 0:
        im[..., -1] = 0
    spectrum = torch.complex(re * scale, im * scale)
    series = torch.fft.irfft(spectrum, n=horizon)  # [*lead, A, T]
    # Expected std of each series from the spectrum (Parseval), so the variance is one.
    weights = torch.full_like(scale, 4.0)  # Var Re(X e^{i w}) * 2^2 for the paired bins
    weights[0] = 1.0
    if horizon % 2 == 0:
        weights[-1] = 1.0
    sigma = torch.sqrt((weights * scale**2).sum()) / horizon
    return (series / sigma).transpose(-1, -2).contiguous()


def _clip_(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``x`` clipped to ``[low, high]`` (``[A]`` tensors) in place; returns ``x``. On a large
    batch minimum/maximum into ``x`` take a third of the time of ``torch.clamp`` with
    tensor bounds (the same values: ``low < high``, NaN stays NaN)."""
    return torch.maximum(torch.minimum(x, high, out=x), low, out=x)


def _has_nan(plan: torch.Tensor) -> bool:
    """Does ``plan`` hold a NaN? Its sum is NaN then (one small op), confirmed elementwise
    (bounds near the float range could overflow the sum into inf - inf)."""
    return math.isnan(float(plan.sum())) and bool(torch.isnan(plan).any())


def _all_non_finite() -> ValueError:
    return ValueError("MPPI: every sampled plan had a non-finite cost; the dynamics or cost "
                      "returned NaN/inf")


def _uniform_bounds(low: torch.Tensor, high: torch.Tensor) -> tuple[float, float] | None:
    """``(low, high)`` as Python floats when every action dimension has the same bounds
    (one ``clamp_`` with scalar bounds clips a whole buffer), else None."""
    if bool((low == low[0]).all()) and bool((high == high[0]).all()):
        return float(low[0]), float(high[0])
    return None


class CEM(Planner):
    """Cross-entropy method with the iCEM refinements (Pinneri et al. 2020).

    Each iteration draws ``samples`` plans from ``N(mean, std^2)`` (time-correlated with
    spectrum ``1/f^beta``), clips them to the bounds, keeps the ``elites`` cheapest and
    moves the mean/std towards theirs: ``mean <- alpha * mean + (1 - alpha) * elite_mean``.
    A fraction ``keep_elites`` of the elites is carried into the next iteration and,
    shifted by one step, into the next control step. ``act`` returns the best plan seen
    (``return_best=True``) or the final mean.

    Args (besides :class:`~planners.mpc.base.Planner`'s):
        samples, elites, iterations: population size, elite count, CEM iterations.
        init_std: initial std as a fraction of the half-range of the bounds.
        alpha: momentum of the mean/std update in [0, 1).
        beta: coloured-noise exponent (0: white).
        keep_elites: fraction of elites carried over (0 disables it).
        min_std: iterations stop early when every std is below this (fraction of range).
    """

    def __init__(self, *args, samples: int = 500, elites: int = 50, iterations: int = 5,
                 init_std: float = 0.5, alpha: float = 0.1, beta: float = 0.0,
                 keep_elites: float = 0.0, return_best: bool = True, min_std: float = 0.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.samples = _check_int("samples", samples, 2)
        self.elites = _check_int("elites", elites, 1)
        if elites > samples:
            raise ValueError(f"elites ({elites}) must not exceed samples ({samples})")
        self.iterations = _check_int("iterations", iterations, 1)
        self.init_std = _check_positive("init_std", init_std)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        if self.beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if not 0.0 <= keep_elites <= 1.0:
            raise ValueError(f"keep_elites must be in [0, 1], got {keep_elites}")
        self.keep_elites = float(keep_elites)
        self.return_best = bool(return_best)
        self.min_std = _check_positive("min_std", min_std, allow_zero=True)
        self._kept: torch.Tensor | None = None  # elites kept for the next step [B, K, T, A]
        self._returns_checked_plan = self.return_best
        self._uniform = _uniform_bounds(self.action_low, self.action_high)
        self._cache: dict = {}
        self._buffers: dict[tuple, _CEMBuffers] = {}

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._kept = None

    def _constants(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(alpha, 1 - alpha, half-range [A], initial std [A])`` on ``like``'s device and
        dtype; the scalars as 0-dim tensors (the same values as the Python floats, without
        their wrapping at every call)."""
        key = (like.device, like.dtype, self.alpha, self.init_std)
        if key not in self._cache:
            low, high = self._bounds(like)
            half = (high - low) / 2
            self._cache[key] = (*(torch.tensor(v, device=like.device, dtype=like.dtype)
                                  for v in (self.alpha, 1 - self.alpha)),
                                half, self.init_std * half)
        return self._cache[key]

    def _no_cost(self, b: int, like: torch.Tensor) -> torch.Tensor:
        """``[B]`` of +inf, the best cost before any sample (cached: never written to)."""
        key = ("inf", b, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = torch.full((b,), float("inf"), device=like.device,
                                          dtype=like.dtype)
        return self._cache[key]

    def _work(self, a: int, t: int, b: int, n: int, like: torch.Tensor) -> _CEMBuffers:
        """The buffers for ``n`` candidates per problem (``samples``, or ``samples`` plus
        the kept elites: two shapes in turn after a reset)."""
        key = (a, t, b, n, like.device, like.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= 4:  # shapes of the past (another batch size)
                self._buffers.clear()
            buf = self._buffers[key] = _CEMBuffers(a, t, b, n, self.samples, like)
        return buf

    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        """Each iteration writes its samples, the mean (last iteration) and the kept elites
        into one preallocated candidate buffer, which is the fast rollout's action buffer
        (no concatenation, no per-call layout copies); the arithmetic is that of the
        straightforward form, value for value."""
        low, high = self._bounds(state)
        b, t, a = init.shape
        g = self.generator(state.device)
        alpha, rest, half, std0 = self._constants(state)
        mean = init
        std = std0.expand(b, t, a)
        n_keep = int(round(self.keep_elites * self.elites))
        kept = self._kept if (self._kept is not None and self._kept.shape[0] == b
                              and self._kept.shape[2] >= t
                              and self._kept.device == state.device) else None
        if kept is not None and (kept.shape[2] != t or kept.dtype != state.dtype):
            kept = kept[:, :, :t].to(state.dtype)  # the horizon may have been shortened
        best, best_cost = init, self._no_cost(b, state)
        for it in range(self.iterations):
            n_total = self.samples + (kept.shape[1] if kept is not None else 0)
            buf = self._work(a, t, b, n_total, state)
            if self.beta == 0 and it == 0 and self._uniform is not None:
                # one std for every entry (equal bounds): the draw at that std is randn()
                # * std, value for value, and the samples one add away
                white = buf.white.normal_(0.0, float(std0[0]), generator=g)
                torch.add(white.permute(3, 2, 0, 1), mean.permute(2, 1, 0).unsqueeze(-1),
                          out=buf.sampled)
            else:
                if self.beta == 0:  # white noise straight into the buffer (randn's values)
                    white = buf.white.normal_(generator=g).permute(3, 2, 0, 1)
                else:
                    white = colored_noise(self.beta, (b, self.samples, a), t, generator=g,
                                          device=state.device,
                                          dtype=state.dtype).permute(3, 2, 0, 1)
                torch.mul(white, std.permute(2, 1, 0).unsqueeze(-1), out=buf.sampled)
                buf.sampled.add_(mean.permute(2, 1, 0).unsqueeze(-1))
            if it == self.iterations - 1:  # iCEM: the mean itself is a candidate
                buf.first.copy_(mean.permute(2, 1, 0))
            if kept is not None:
                buf.kept.copy_(kept.permute(3, 2, 0, 1))
            if self._uniform is not None:
                buf.cand.clamp_(*self._uniform)
            else:
                _clip_(buf.cand4, low.view(a, 1, 1, 1), high.view(a, 1, 1, 1))
            fast = self._fast_rollout(state, buf.cand, n_total)
            if fast is not None:
                costs = self._rollout_columns(state, fast)
            else:
                costs = self._rollout_cost(state, buf.cand_rows)
            # [B, N]; topk ranks a NaN cost above +inf: a NaN plan is never picked first
            # while a finite one is left (and a NaN best cost raises below)
            last = it == self.iterations - 1
            n_pick = self.elites
            if last and self.return_best:  # only the best and the kept elites are read
                n_pick = max(n_keep, 1)
            elite_cost, order = costs.topk(n_pick, dim=1, largest=False)
            elite = torch.gather(buf.cand_rows, 1, order[..., None, None].expand(-1, -1, t, a))
            if it == 0:  # anything beats the +inf start (a row left at +inf raises below)
                best, best_cost = elite[:, 0], elite_cost[:, 0]
                if not last:  # a NaN best must lose to any later finite cost
                    best_cost = best_cost.nan_to_num(float("inf"))
            else:
                better = elite_cost[:, 0] < best_cost
                best = torch.where(better[:, None, None], elite[:, 0], best)
                best_cost = torch.where(better, elite_cost[:, 0], best_cost)
            kept = elite[:, :n_keep] if n_keep > 0 else None
            if last and self.return_best:  # the mean and std die with this call
                break
            mean = alpha * mean + rest * elite.mean(1)
            if last:
                break
            std = alpha * std + rest * elite.std(1, unbiased=False)
            if self.min_std > 0 and bool((std < self.min_std * half).all()):
                break
        # a row whose best cost is +inf or NaN (every sample non-finite): the maximum says it
        if not float(best_cost.amax()) < float("inf"):
            raise ValueError("CEM: every sampled plan had a non-finite cost; the dynamics or "
                             "cost returned NaN/inf")
        self._kept = self._shift(kept, dim=2) if kept is not None else None  # along time
        self.last_cost = best_cost
        # the best plan is a clipped candidate with a finite cost: no clipping or NaN check
        # left for the caller (the mean is clipped there: rounding may leave the bounds)
        return best if self.return_best else mean


class _CEMBuffers:
    """CEM's per-shape work buffers: candidates ``[A, T, B, N]`` (the rollout's
    column-major action buffer; ``N`` samples, then the kept elites), with a sample-major
    ``[B, N, T, A]`` view for picking elites, and the white-noise buffer ``[B, S, T, A]``
    (the draw order of ``torch.randn``)."""

    def __init__(self, a: int, t: int, b: int, n: int, samples: int,
                 like: torch.Tensor) -> None:
        opts = {"device": like.device, "dtype": like.dtype}
        self.cand = torch.empty(a, t, b * n, **opts)
        self.cand4 = self.cand.view(a, t, b, n)
        self.cand_rows = self.cand4.permute(2, 3, 1, 0)  # [B, N, T, A] view
        self.sampled = self.cand4[..., :samples]
        self.first = self.cand4[..., 0]
        self.kept = self.cand4[..., samples:]
        self.white = torch.empty(b, samples, t, a, **opts)


class _MPPIBuffers:
    """MPPI's per-shape work buffers. The noise is drawn ``[B, K, T, A]`` (sample-major,
    the draw order of the reference update); candidates and applied noise are laid out
    ``[A, T, B, K]`` (action-, then step-major): the candidates are then already the
    column-major ``[A, T, B*K]`` action buffer of the rollout, and the noise of one
    problem a ``[A*T, K]`` matrix for the batched products of the control cost and the
    update."""

    def __init__(self, a: int, t: int, b: int, k: int, like: torch.Tensor,
                 full_covariance: bool) -> None:
        self.key = (a, t, b, k, like.device, like.dtype)
        opts = {"device": like.device, "dtype": like.dtype}
        self.white = torch.empty(b, k, t, a, **opts)
        self.shaped = torch.empty(b, k, t, a, **opts) if full_covariance else self.white
        self.shaped_first = self.shaped[:, 0]  # sample 0 of every problem: the plan itself
        self.shaped_cols = self.shaped.permute(3, 2, 0, 1)  # [A, T, B, K] view
        self.cand = torch.empty(a, t, b * k, **opts)
        self.cand4 = self.cand.view(a, t, b, k)
        self.eps = torch.empty(a, t, b, k, **opts)
        self.eps_bk = self.eps.view(a * t, b, k).permute(1, 0, 2)  # [B, A*T, K]


class MPPI(Planner):
    """Model-predictive path integral control (Williams et al. 2017).

    Samples ``U + eps`` with ``eps ~ N(0, Sigma)`` (``noise_sigma``: ``[A, A]`` covariance,
    ``[A]`` variances or a scalar), clips to the bounds, scores each sample by its cost
    plus the control cost ``lambda * sum_t U_t^T Sigma^{-1} eps_t`` and updates
    ``U <- U + sum_i w_i eps_i`` with importance weights ``w = softmax(-S / lambda)``.

    Args (besides :class:`~planners.mpc.base.Planner`'s):
        samples: number of sampled sequences ``K``.
        temperature: ``lambda > 0``.
        noise_sigma: exploration covariance (absolute action units).
        iterations: MPPI updates per control step (1 is the classical algorithm).
        control_cost: weight of the control cost term (1: Williams' form, 0: off).
        include_mean: also score the unperturbed plan ``U`` (one of the K samples).
    """

    _returns_checked_plan = True

    def __init__(self, *args, samples: int = 1000, temperature: float = 1.0,
                 noise_sigma: float | torch.Tensor = 1.0, iterations: int = 1,
                 control_cost: float = 1.0, include_mean: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.samples = _check_int("samples", samples, 1)
        self.temperature = _check_positive("temperature", temperature)
        self.iterations = _check_int("iterations", iterations, 1)
        self.control_cost = _check_positive("control_cost", control_cost, allow_zero=True)
        self.include_mean = bool(include_mean)
        a = self.action_dim
        sigma = torch.as_tensor(noise_sigma, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma * torch.eye(a)
        elif sigma.ndim == 1:
            if sigma.shape[0] != a:
                raise ValueError(f"noise_sigma must be a scalar, [A={a}] or [A, A], got "
                                 f"{list(sigma.shape)}")
            sigma = torch.diag(sigma)
        if sigma.shape != (a, a):
            raise ValueError(f"noise_sigma must be a scalar, [A={a}] or [A, A], got "
                             f"{list(sigma.shape)}")
        try:
            self._chol = torch.linalg.cholesky(sigma)
        except RuntimeError:
            raise ValueError("noise_sigma must be symmetric positive definite") from None
        self.noise_sigma = sigma
        self._sigma_inv = torch.cholesky_inverse(self._chol)
        self._diagonal = bool((sigma == torch.diag(sigma.diagonal())).all())
        std = self._chol.diagonal()
        # one std for every action: the noise is drawn at that std directly (normal_(0, std))
        self._equal_std = (float(std[0]) if self._diagonal and bool((std == std[0]).all())
                           else None)
        self._uniform = _uniform_bounds(self.action_low, self.action_high)
        self._cache: dict = {}
        self._buffers: _MPPIBuffers | None = None
        self._compiled_update = None

    def _mats(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(chol, Sigma^-1, std [A], 1/variance [A], low, high [A, 1, 1, 1])`` on
        ``like``'s device and dtype."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            chol, inv = (m.to(like.device, like.dtype) for m in (self._chol, self._sigma_inv))
            low, high = self._bounds(like)
            a = self.action_dim
            self._cache[key] = (chol, inv, chol.diagonal().clone(),
                                inv.diagonal().clone(), low.view(a, 1, 1, 1),
                                high.view(a, 1, 1, 1))
        return self._cache[key]

    def _scalars(self, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(control_cost * lambda, -1 / lambda)`` as 0-dim tensors of ``like``'s dtype: a
        Python float in a tensor op is wrapped and cast at every call (the same values).
        Python floats under torch.compile (constants of its kernels; a cache filled while
        tracing would trigger a recompilation)."""
        if torch.compiler.is_compiling():
            return self.control_cost * self.temperature, -1.0 / self.temperature
        key = ("scalars", like.device, like.dtype, self.control_cost, self.temperature)
        if key not in self._cache:
            self._cache[key] = tuple(torch.tensor(v, device=like.device, dtype=like.dtype)
                                     for v in (self.control_cost * self.temperature,
                                               -1.0 / self.temperature))
        return self._cache[key]

    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        plan = self._optimize_compiled(state, init) if self.compile else None
        if plan is None:
            return self._optimize_eager(state, init)  # checks its plans itself
        if _has_nan(plan):
            raise _all_non_finite()
        return plan

    def _optimize_eager(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        """The iterations in preallocated buffers: per update one draw into the noise
        buffer, the candidates written into the rollout's action buffer, the fast rollout,
        and two batched products (control cost folded into the logits, weighted noise
        added to the plan); no per-sample Python work, no copies of the samples. A NaN
        cost is masked out (it weighs nothing) only when the new plan comes out NaN: the
        plan's sum, needed for that check anyway, says so."""
        b, t, a = init.shape
        k = self.samples
        buf = self._buffers
        if buf is None or buf.key != (a, t, b, k, state.device, state.dtype):
            buf = self._buffers = _MPPIBuffers(a, t, b, k, state, not self._diagonal)
        fast = self._fast_rollout(state, buf.cand, k)
        g = self.generator(state.device)
        chol, sigma_inv, std, inv_var, low4, high4 = self._mats(state)
        low, high = self._bounds(state)
        eps, cand4, uniform = buf.eps, buf.cand4, self._uniform
        plan = init
        for _ in range(self.iterations):
            if self._equal_std is not None:  # std * z: the values of randn() * std
                buf.white.normal_(0.0, self._equal_std, generator=g)
            elif self._diagonal:
                buf.white.normal_(generator=g).mul_(std)
            else:
                torch.mm(buf.white.normal_(generator=g).view(-1, a), chol.T,
                         out=buf.shaped.view(-1, a))
            if self.include_mean:
                buf.shaped_first.zero_()
            plan4 = plan.permute(2, 1, 0).unsqueeze(-1)  # [A, T, B, 1]
            torch.add(buf.shaped_cols, plan4, out=cand4)
            if uniform is not None:
                cand4.clamp_(*uniform)
            else:
                _clip_(cand4, low4, high4)
            torch.sub(cand4, plan4, out=eps)  # the noise actually applied
            if fast is not None:
                costs = self._rollout_columns(state, fast)  # [B, K]
            else:
                costs = self._rollout_cost(state, cand4.permute(2, 3, 1, 0))
            logits = costs.view(b, 1, k)
            # [B, A*T, 1] in the noise's order (for one action the plan's own layout)
            plan_at = (plan.reshape(b, t, 1) if a == 1
                       else plan.transpose(1, 2).reshape(b, a * t, 1))
            if self.control_cost > 0:  # -S / lambda - c * sum_t U_t^T Sigma^-1 eps_t
                if self._equal_std is not None:  # Sigma^-1 = I / std^2: into the factor
                    scaled, weight = plan_at.view(b, 1, a * t), self.control_cost
                    weight /= self._equal_std**2
                else:
                    scaled = plan * inv_var if self._diagonal else plan @ sigma_inv
                    scaled, weight = scaled.transpose(1, 2).reshape(b, 1, a * t), self.control_cost
                logits = torch.baddbmm(logits, scaled, buf.eps_bk,
                                       beta=-1.0 / self.temperature, alpha=-weight)
            else:
                logits = logits * (-1.0 / self.temperature)
            # softmax subtracts the row maximum itself
            new = torch.baddbmm(plan_at, buf.eps_bk, torch.softmax(logits, dim=2).view(b, k, 1))
            if _has_nan(new):  # a NaN cost (rare): it weighs nothing, the update again
                weights = torch.softmax(logits.nan_to_num_(nan=float("-inf")), dim=2)
                new = torch.baddbmm(plan_at, buf.eps_bk, weights.view(b, k, 1))
                if _has_nan(new):  # a row whose samples all had a NaN/inf cost
                    raise _all_non_finite()
            plan = new
            # back to [B, T, A] (a plain view for one action)
            plan = plan.view(b, t, 1) if a == 1 else plan.view(b, a, t).transpose(1, 2)
            if uniform is not None:
                plan.clamp_(*uniform)
            else:
                _clip_(plan, low, high)
        return plan if a == 1 else plan.contiguous()

    def _optimize_compiled(self, state: torch.Tensor, init: torch.Tensor
                           ) -> torch.Tensor | None:
        """The iterations with the whole update (noise shaping, rollout, weights) fused by
        ``torch.compile``; None when compilation failed (the caller then runs eagerly)."""
        low, high = self._bounds(state)
        chol, sigma_inv = self._mats(state)[:2]
        b, t, a = init.shape
        g = self.generator(state.device)
        if self._compiled_update is None:
            self._compiled_update = torch.compile(self._update, dynamic=False)
        drawn_from = g.get_state()
        plan = init
        for _ in range(self.iterations):
            white = torch.randn(b, self.samples, t, a, generator=g, device=state.device,
                                dtype=state.dtype)
            try:
                plan = self._compiled_update(state, plan, white, low, high, chol, sigma_inv)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
                log.warning("torch.compile of the MPPI update failed (%s); running eagerly",
                            exc)
                self.compile = False
                g.set_state(drawn_from)  # the eager run takes the same draws
                return None
        return plan

    def _update(self, state: torch.Tensor, plan: torch.Tensor, white: torch.Tensor,
                low: torch.Tensor, high: torch.Tensor, chol: torch.Tensor,
                sigma_inv: torch.Tensor) -> torch.Tensor:
        """One MPPI update of ``plan [B, T, A]`` with standard-normal ``white [B, K, T, A]``
        in functional form (what ``torch.compile`` traces; the eager planner does the same
        arithmetic in its buffers). Returns the new plan, clipped to the bounds."""
        b, k, t, a = white.shape
        ctrl_weight, neg_inv_temp = self._scalars(white)
        eps = white * chol.diagonal() if self._diagonal else white @ chol.T
        if self.include_mean:  # sample 0 is the unperturbed plan
            eps[:, 0] = 0
        plan4 = plan.permute(2, 1, 0).unsqueeze(-1)
        cand = torch.maximum(torch.minimum(eps.permute(3, 2, 0, 1) + plan4,
                                           high.view(a, 1, 1, 1)),
                             low.view(a, 1, 1, 1))
        eps = cand - plan4
        costs = self._rollout_cost(state, cand.permute(2, 3, 1, 0), allow_compile=False)
        eps_bk = eps.reshape(a * t, b, k).permute(1, 0, 2)  # [B, A*T, K]
        if self.control_cost > 0:
            scaled = plan * sigma_inv.diagonal() if self._diagonal else plan @ sigma_inv
            ctrl = torch.bmm(scaled.transpose(1, 2).reshape(b, 1, a * t), eps_bk).view(b, k)
            costs = costs + ctrl_weight * ctrl
        logits = (costs * neg_inv_temp).nan_to_num(nan=float("-inf"))
        weights = torch.softmax(logits, dim=1)
        plan = torch.bmm(eps_bk, weights[:, :, None]).view(b, a, t).transpose(1, 2) + plan
        return torch.maximum(torch.minimum(plan, high), low)
