"""Gradient MPC: optimise the action sequence by back-propagating the summed cost through
the dynamics (the Kelley-Bryson adjoint method; autograd computes the adjoint recursion
``lambda_t = dc/dx_t + A_t^T lambda_{t+1}``, ``dJ/du_t = dc/du_t + B_t^T lambda_{t+1}``)."""

from __future__ import annotations

import logging
from typing import Literal

import torch

from worldplan.planners.mpc.base import Planner, _check_int, _check_positive

log = logging.getLogger(__name__)

__all__ = ["GradientMPC"]

_EDGE = 1.0 - 1e-4  # tanh saturation kept away from +-1 so atanh stays finite


class GradientMPC(Planner):
    """Adam or L-BFGS over the plan ``[B, T, A]`` through differentiable dynamics.

    Args (besides :class:`~planners.mpc.base.Planner`'s):
        iterations: optimiser steps per call.
        lr: learning rate (Adam) or initial step (L-BFGS), in units of the unconstrained
            variable (``atanh`` of the normalised action when ``bounds="tanh"``).
        optimizer: ``"adam"`` or ``"lbfgs"``. Adam is element-wise, so the B problems stay
            exactly independent; L-BFGS shares its line search across the batch.
        bounds: ``"tanh"`` (``a = mid + half * tanh(w)``) or ``"clip"`` (projection after
            every step).
        restarts: candidate plans per problem optimised in parallel: the warm start plus
            ``restarts - 1`` random plans (uniform within the bounds); the best is returned.
        init_noise: std (in normalised action units) of noise added to the warm start of
            the extra restarts; 0 draws them uniformly instead.
        resample_z: draw new latents every iteration (stochastic gradient over z) rather
            than once per call.
    """

    _needs_grad = True

    def __init__(self, *args, iterations: int = 20, lr: float = 0.1,
                 optimizer: Literal["adam", "lbfgs"] = "adam",
                 bounds: Literal["tanh", "clip"] = "tanh", restarts: int = 1,
                 init_noise: float = 0.0, resample_z: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.iterations = _check_int("iterations", iterations, 1)
        self.lr = _check_positive("lr", lr)
        if optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
        if bounds not in ("tanh", "clip"):
            raise ValueError(f"bounds must be 'tanh' or 'clip', got {bounds!r}")
        self.optimizer = optimizer
        self.bounds = bounds
        self.restarts = _check_int("restarts", restarts, 1)
        self.init_noise = _check_positive("init_noise", init_noise, allow_zero=True)
        self.resample_z = bool(resample_z)
        self.last_costs: torch.Tensor | None = None  # [iterations + 1, B] of the last call

    # -- parameterisation -------------------------------------------------------------
    def _to_free(self, actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor
                 ) -> torch.Tensor:
        if self.bounds == "clip":
            return actions.clone()
        unit = (2 * (actions - low) / (high - low) - 1).clamp(-_EDGE, _EDGE)
        return torch.atanh(unit)

    def _to_actions(self, free: torch.Tensor, low: torch.Tensor, high: torch.Tensor
                    ) -> torch.Tensor:
        if self.bounds == "clip":
            return free
        return low + (high - low) * (torch.tanh(free) + 1) / 2

    def _candidates(self, init: torch.Tensor, low: torch.Tensor, high: torch.Tensor
                    ) -> torch.Tensor:
        """Starting plans ``[B, N, T, A]``: the warm start and ``N - 1`` perturbations."""
        if self.restarts == 1:
            return init[:, None]
        b, t, a = init.shape
        n = self.restarts - 1
        g = self.generator(init.device)
        if self.init_noise > 0:
            noise = torch.randn(b, n, t, a, device=init.device, dtype=init.dtype, generator=g)
            extra = init[:, None] + noise * self.init_noise * (high - low) / 2
        else:
            u = torch.rand(b, n, t, a, device=init.device, dtype=init.dtype, generator=g)
            extra = low + (high - low) * u
        extra = torch.max(torch.min(extra, high), low)
        return torch.cat([init[:, None], extra], dim=1)

    def gradient(self, state: torch.Tensor, actions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective ``J [B]`` of ``actions [B, T, A]`` from ``state [B, S]`` and its
        gradient ``dJ/da [B, T, A]`` (the adjoint, by back-propagation through the rollout);
        with a latent, for one fresh draw of ``z``."""
        self._validate(state)
        with torch.enable_grad():
            acts = actions.detach().clone().requires_grad_(True)
            cost = self._rollout_cost(state.detach(), acts[:, None])[:, 0]
            (grad,) = torch.autograd.grad(cost.sum(), acts)
        return cost.detach(), grad

    # -- optimisation -------------------------------------------------------------------
    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        low, high = self._bounds(state)
        cand = self._candidates(init, low, high)  # [B, N, T, A]
        b, n = cand.shape[:2]
        free = self._to_free(cand, low, high).requires_grad_(True)
        z_fixed = None
        if self.latent_dim > 0 and not self.resample_z:
            z_fixed = self._sample_z(b * n * self.z_samples, state)

        def evaluate() -> torch.Tensor:
            z = z_fixed
            if self.latent_dim > 0 and z is None:
                z = self._sample_z(b * n * self.z_samples, state)
            return self._rollout_cost(state, self._to_actions(free, low, high), z)  # [B, N]

        best_cost = torch.full((b, n), float("inf"), device=state.device, dtype=state.dtype)
        best = cand.clone()
        history = []

        def keep_best(costs: torch.Tensor) -> None:
            costs = costs.detach().nan_to_num(float("inf"))
            better = costs < best_cost
            if better.any():
                acts = self._to_actions(free.detach(), low, high)
                best.copy_(torch.where(better[..., None, None], acts, best))
                best_cost.copy_(torch.where(better, costs, best_cost))

        if self.optimizer == "adam":
            opt = torch.optim.Adam([free], lr=self.lr)
            for _ in range(self.iterations):
                costs = evaluate()
                keep_best(costs)
                history.append(costs.detach().amin(1))
                opt.zero_grad(set_to_none=True)
                costs.sum().backward()
                if free.grad is not None:
                    free.grad.nan_to_num_(0.0, 0.0, 0.0)
                opt.step()
                if self.bounds == "clip":
                    with torch.no_grad():
                        free.copy_(torch.max(torch.min(free, high), low))
        else:
            opt = torch.optim.LBFGS([free], lr=self.lr, max_iter=self.iterations,
                                    line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                costs = evaluate()
                keep_best(costs)
                history.append(costs.detach().amin(1))
                total = costs.sum()
                total.backward()
                return total

            opt.step(closure)
            if self.bounds == "clip":
                with torch.no_grad():
                    free.copy_(torch.max(torch.min(free, high), low))
        with torch.no_grad():
            final = evaluate()
            keep_best(final)
            history.append(final.amin(1))
        self.last_costs = torch.stack(history)
        if not torch.isfinite(best_cost).any(dim=1).all():
            raise ValueError("GradientMPC: every candidate plan had a non-finite cost; the "
                             "dynamics or cost returned NaN/inf along the way")
        pick = best_cost.argmin(dim=1)
        return best[torch.arange(b, device=state.device), pick]
