"""Build a planner from settings, and adapt a trained world model to the planners.

* :class:`MPCSettings` holds a planner's settings as a user states them; 0 (or -1,
  ``"auto"``) means "the task's default, else the planner's". :func:`resolve_settings`
  replaces every such field by the value that will be used, so a configuration file or a
  ``--help`` page can show real numbers.
* :func:`build_planner` turns resolved settings into a :class:`CEM`, :class:`MPPI`,
  :class:`GradientMPC` or :class:`ILQR` for a task that provides ``cost``,
  ``terminal_cost`` and action bounds.
* :func:`model_dynamics` gives the planners' ``dynamics`` callable of a world model, its
  latent size and, for an ensemble, its disagreement as an uncertainty penalty.
* :func:`lqr_terminal_cost` is the Riccati cost-to-go of a model linearised at the goal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

import torch

from worldplan.planners.mpc.base import Dynamics, Planner, TerminalCost, Uncertainty
from worldplan.planners.mpc.gradient import GradientMPC
from worldplan.planners.mpc.lqr import ILQR, dare, linearize
from worldplan.planners.mpc.sampling import CEM, MPPI
from worldplan.worldmodels.ensemble import Ensemble

log = logging.getLogger(__name__)

PLANNERS = ("cem", "mppi", "gradient", "ilqr")
# A planner's own defaults, used where neither the user nor the task sets a value.
PLANNER_DEFAULTS: dict[str, dict[str, int]] = {
    "cem": {"samples": 200, "elites": 20, "iterations": 4},
    "mppi": {"samples": 1000, "iterations": 1},
    "gradient": {"samples": 0, "iterations": 10},
    "ilqr": {"samples": 0, "iterations": 3},
}
DEFAULT_HORIZON = 15


class PlanningTask(Protocol):
    """What :func:`build_planner` needs of a task (e.g. a gymnasium task model)."""

    action_low: torch.Tensor
    action_high: torch.Tensor

    def cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor: ...

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor: ...


@dataclass
class MPCSettings:
    """Planner settings; 0 picks the per-env / per-planner default."""

    horizon: int = 0
    samples: int = 0  # CEM / MPPI population
    elites: int = 0  # CEM
    iterations: int = 0  # optimiser iterations per control step
    temperature: float = 1.0  # MPPI lambda
    noise_sigma: float = 0.5  # MPPI exploration std, fraction of the action half-range
    beta: float = -1.0  # iCEM coloured-noise exponent (<0: per env, 2 by default)
    keep_elites: float = 0.3  # iCEM fraction of elites kept
    cem_return: str = "auto"  # CEM acts on the "best" sample or the elite "mean" (auto: per env)
    lr: float = 0.3  # gradient MPC (Adam, tanh-space units)
    restarts: int = 4  # gradient MPC parallel restarts
    z_samples: int = 4  # latent samples per plan (cVAE)
    uncertainty_weight: float = -1.0  # penalty on the ensemble's disagreement (<0: per env)
    terminal: str = "auto"  # terminal cost: "state" cost, "lqr" cost-to-go (auto: per env)
    terminal_r: float = 0.1  # action weight R of the LQR cost-to-go (the task's cost has none)


def resolve_settings(settings: MPCSettings, planner: str,
                     task_defaults: Mapping[str, Any] | None = None) -> MPCSettings:
    """``settings`` with every "default" value (0, negative, ``"auto"``) replaced by the
    task's default for ``planner`` (``task_defaults``, e.g. ``GymTaskModel.planning``: keys
    ``horizon``, ``<planner>_samples``, ``<planner>_iterations``, ``beta``, ``cem_return``,
    ``uncertainty_weight``, ``terminal``), else by the planner's own. Idempotent."""
    if planner not in PLANNERS:
        raise ValueError(f"unknown planner {planner!r}; choose from {', '.join(PLANNERS)}")
    td, pd = dict(task_defaults or {}), PLANNER_DEFAULTS[planner]
    samples = settings.samples or td.get(f"{planner}_samples", pd["samples"])
    out = replace(
        settings,
        horizon=settings.horizon or td.get("horizon", DEFAULT_HORIZON),
        samples=samples,
        iterations=settings.iterations or td.get(f"{planner}_iterations", pd["iterations"]),
        elites=settings.elites or (max(2, min(pd["elites"], samples // 10))
                                   if planner == "cem" else 0),
        beta=settings.beta if settings.beta >= 0 else td.get("beta", 2.0),
        cem_return=(settings.cem_return if settings.cem_return != "auto"
                    else td.get("cem_return", "best")),
        uncertainty_weight=(settings.uncertainty_weight if settings.uncertainty_weight >= 0
                            else td.get("uncertainty_weight", 0.0)),
        terminal=settings.terminal if settings.terminal != "auto" else td.get("terminal",
                                                                              "state"),
    )
    if out.cem_return not in ("best", "mean"):
        raise ValueError(f"mpc.cem_return must be auto, best or mean, got {out.cem_return!r}")
    if out.terminal not in ("state", "lqr"):
        raise ValueError(f"mpc.terminal must be auto, state or lqr, got {out.terminal!r}")
    return out


def build_planner(name: str, dynamics: Dynamics, task: PlanningTask, settings: MPCSettings,
                  task_defaults: Mapping[str, Any] | None = None, seed: int = 0,
                  latent_dim: int = 0, uncertainty: Uncertainty | None = None,
                  terminal_cost: TerminalCost | None = None) -> Planner:
    """A planner of kind ``name`` (cem, mppi, gradient, ilqr) for ``task``, with
    ``settings`` resolved against ``task_defaults`` (:func:`resolve_settings`).

    ``terminal_cost`` replaces the task's own (e.g. :func:`lqr_terminal_cost`); the
    ``uncertainty`` penalty is used only when the resolved ``uncertainty_weight`` is > 0.
    A task that declares ``state_dim`` passes it on, so that a world model of another
    state (or action) size is refused here, before any planning.
    """
    s = resolve_settings(settings, name, task_defaults)
    task_s = getattr(task, "state_dim", None)
    common: dict[str, Any] = dict(terminal_cost=terminal_cost or task.terminal_cost, seed=seed,
                                  latent_dim=latent_dim,
                                  z_samples=s.z_samples if latent_dim else 1,
                                  state_dim=task_s if isinstance(task_s, int) else None)
    if uncertainty is not None and s.uncertainty_weight > 0:
        common.update(uncertainty=uncertainty, uncertainty_weight=s.uncertainty_weight)
    args = (dynamics, task.cost, task.action_low, task.action_high, s.horizon)
    if name == "cem":
        return CEM(*args, samples=s.samples, elites=s.elites, iterations=s.iterations,
                   beta=s.beta, keep_elites=s.keep_elites,
                   return_best=s.cem_return == "best", **common)
    if name == "mppi":
        half = (task.action_high - task.action_low) / 2
        return MPPI(*args, samples=s.samples, temperature=s.temperature,
                    noise_sigma=(s.noise_sigma * half) ** 2, iterations=s.iterations,
                    **common)
    if name == "gradient":
        return GradientMPC(*args, iterations=s.iterations, lr=s.lr, restarts=s.restarts,
                           **common)
    return ILQR(*args, iterations=s.iterations, **common)


class ModelDynamics(NamedTuple):
    """A world model as the planners see it."""

    dynamics: Dynamics  # (state [B, S], action [B, A][, z [B, Z]]) -> next state [B, S]
    latent_dim: int  # Z: 0 for a model without a latent
    uncertainty: Uncertainty | None  # (state, action) -> [B], or None


def model_dynamics(model: torch.nn.Module) -> ModelDynamics:
    """The planners' view of a trained world model (frozen and put in eval mode).

    For an :class:`Ensemble` the uncertainty is the members' variance of the next state in
    units of the model's delta std, summed over the state; the planners evaluate it right
    before stepping the same ``(state, action)``, so the members' mean is cached for that
    step instead of running the members twice. The callables carry the model's
    ``state_dim``/``action_dim`` (the planners check them against the task's).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    latent = int(getattr(model, "z_dim", 0) or 0)
    cache: list[torch.Tensor] = []
    if latent:
        def dynamics(x: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return model.step(x, u, z)
    else:
        def dynamics(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            if cache and cache[0] is x and cache[1] is u:
                return cache[2]
            return model.step(x, u)
    uncertainty = None
    if isinstance(model, Ensemble):
        def uncertainty(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            preds = model.rollout_members(x, u[:, None])[:, :, 0]  # [K, B, S]
            cache[:] = [x, u, preds.mean(0)]
            return (preds.var(0) / model.delta_std**2).sum(-1)
    for fn in (dynamics, uncertainty):
        if fn is not None:  # what planners.mpc.base.model_dims reads
            fn.state_dim = getattr(model, "state_dim", None)  # type: ignore[attr-defined]
            fn.action_dim = getattr(model, "action_dim", None)  # type: ignore[attr-defined]
    return ModelDynamics(dynamics, latent, uncertainty)


def lqr_terminal_cost(dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      task: Any, r: float = 0.1, device: torch.device | str = "cpu"
                      ) -> TerminalCost | None:
    """``x -> (x - goal)^T P (x - goal)``: the LQR cost-to-go of ``dynamics`` linearised at
    the task's goal (state ``goal``, action 0), for a task whose state cost is quadratic
    (``task.quadratic_cost() -> (Q [S, S], goal [S])``), with action weight ``r``.

    A short horizon cannot see the slow part of a task (InvertedPendulum: bringing the
    cart back to the middle needs the pole tipped the other way first, and a cart left
    drifting hits the rail end a second or two later); the Riccati cost-to-go charges for
    that tail. ``None`` when the task has no quadratic cost or the linearisation is not
    stabilisable (the caller then keeps the task's own terminal cost).
    """
    if not hasattr(task, "quadratic_cost"):
        return None
    if r <= 0:
        raise ValueError(f"mpc.terminal_r must be positive, got {r}")
    q, goal = (t.to(device) for t in task.quadratic_cost())
    u0 = torch.zeros(1, task.action_dim, device=device)
    a, b = linearize(dynamics, goal[None], u0)
    try:
        p = dare(a[0].double(), b[0].double(), q.double(),
                 r * torch.eye(task.action_dim, dtype=torch.float64, device=device))
    except ValueError as exc:
        log.warning("LQR terminal cost unavailable (%s); using the task's terminal cost", exc)
        return None
    p = p.float()

    def terminal_cost(state: torch.Tensor) -> torch.Tensor:
        d = state - goal.to(state.dtype)
        return ((d @ p.to(state.dtype)) * d).sum(-1)
    return terminal_cost
