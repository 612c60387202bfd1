"""Sampling-based planners: the cross-entropy method (with the iCEM refinements) and MPPI."""

from __future__ import annotations

import logging

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

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._kept = None

    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        low, high = self._bounds(state)
        half = (high - low) / 2
        b, t, a = init.shape
        g = self.generator(state.device)
        mean = init.clone()
        std = (self.init_std * half).expand(b, t, a).clone()
        n_keep = int(round(self.keep_elites * self.elites))
        kept = self._kept if (self._kept is not None and self._kept.shape[0] == b
                              and self._kept.shape[2] >= t
                              and self._kept.device == state.device) else None
        if kept is not None:  # the horizon may have been shortened since the last call
            kept = kept[:, :, :t].to(state.dtype)
        best = init.clone()
        best_cost = torch.full((b,), float("inf"), device=state.device, dtype=state.dtype)
        for it in range(self.iterations):
            noise = colored_noise(self.beta, (b, self.samples, a), t, generator=g,
                                  device=state.device, dtype=state.dtype)
            cand = (std[:, None] * noise).add_(mean[:, None])  # in place: one temporary
            if it == self.iterations - 1:
                cand[:, 0] = mean  # iCEM: the mean itself is a candidate in the last iteration
            if kept is not None:
                cand = torch.cat([cand, kept], dim=1)
            cand = _clip_(cand, low, high)
            costs = self._rollout_cost(state, cand).nan_to_num(float("inf"))  # [B, N]
            order = costs.topk(self.elites, dim=1, largest=False).indices
            elite = torch.gather(cand, 1, order[..., None, None].expand(-1, -1, t, a))
            elite_cost = torch.gather(costs, 1, order)
            better = elite_cost[:, 0] < best_cost
            best = torch.where(better[:, None, None], elite[:, 0], best)
            best_cost = torch.where(better, elite_cost[:, 0], best_cost)
            mean = self.alpha * mean + (1 - self.alpha) * elite.mean(1)
            std = self.alpha * std + (1 - self.alpha) * elite.std(1, unbiased=False)
            kept = elite[:, :n_keep] if n_keep > 0 else None
            if self.min_std > 0 and bool((std < self.min_std * half).all()):
                break
        if not torch.isfinite(best_cost).all():
            raise ValueError("CEM: every sampled plan had a non-finite cost; the dynamics or "
                             "cost returned NaN/inf")
        self._kept = self._shift(kept) if kept is not None else None
        self.last_cost = best_cost
        return best if self.return_best else mean


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
        self._cache: dict = {}
        self._compiled_update = None

    def _mats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self._chol.to(like.device, like.dtype),
                                self._sigma_inv.to(like.device, like.dtype))
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
        low, high = self._bounds(state)
        chol, sigma_inv = self._mats(state)
        b, t, a = init.shape
        g = self.generator(state.device)
        plan = init  # _update never writes into its plan argument
        update = self._update
        if self.compile:  # fuse the whole update (noise shaping, rollout, weights) into one
            if self._compiled_update is None:
                self._compiled_update = torch.compile(self._update, dynamic=False)
            update = self._compiled_update
        for _ in range(self.iterations):
            white = torch.randn(b, self.samples, t, a, generator=g, device=state.device,
                                dtype=state.dtype)
            try:
                plan, finite = update(state, plan, white, low, high, chol, sigma_inv)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
                if update is self._update:
                    raise
                log.warning("torch.compile of the MPPI update failed (%s); running eagerly",
                            exc)
                self.compile, update = False, self._update
                plan, finite = update(state, plan, white, low, high, chol, sigma_inv)
            if not bool(finite):
                raise ValueError("MPPI: every sampled plan had a non-finite cost; the dynamics "
                                 "or cost returned NaN/inf")
        return plan

    def _update(self, state: torch.Tensor, plan: torch.Tensor, white: torch.Tensor,
                low: torch.Tensor, high: torch.Tensor, chol: torch.Tensor,
                sigma_inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One MPPI update of ``plan [B, T, A]`` with standard-normal ``white [B, K, T, A]``;
        returns the new plan and whether every problem had a finite-cost sample."""
        b, k, t, a = white.shape
        ctrl_weight, neg_inv_temp = self._scalars(white)
        eps = white * chol.diagonal() if self._diagonal else white @ chol.T
        if self.include_mean:  # sample 0 is the unperturbed plan
            eps[:, 0] = 0
        # in place on this call's own temporaries: no extra allocations
        cand = _clip_(torch.add(plan[:, None], eps), low, high)
        eps = torch.sub(cand, plan[:, None], out=eps)  # the noise actually applied
        costs = self._rollout_cost(state, cand, allow_compile=False)  # [B, K]
        flat = eps.view(b, k, t * a)
        if self.control_cost > 0:  # lambda * sum_t U_t^T Sigma^-1 eps_t, one batched product
            # a diagonal Sigma^-1 scales each action: the matmul's one non-zero product
            scaled = plan * sigma_inv.diagonal() if self._diagonal else plan @ sigma_inv
            ctrl = torch.bmm(flat, scaled.reshape(b, t * a, 1)).view(b, k)
            costs = costs + ctrl_weight * ctrl
        costs = costs.nan_to_num(float("inf"))
        # after nan_to_num only a NaN (now +inf) is non-finite: a row is usable when its
        # cheapest sample is finite
        finite = (costs.amin(dim=1) < float("inf")).all()
        # softmax subtracts the row maximum itself: no separate shift by the minimum cost
        weights = torch.softmax(costs * neg_inv_temp, dim=1)
        plan = torch.bmm(weights[:, None], flat).view(b, t, a).add_(plan)
        return plan.clamp_(low, high), finite
