"""The common interface of the MPC planners: validation, rollouts, receding-horizon warm start.

Conventions (every planner):

* ``dynamics(state [B, S], action [B, A]) -> next_state [B, S]``; with ``latent_dim > 0``
  the call is ``dynamics(state, action, z [B, Z])`` with ``z`` drawn from N(0, I) per step.
* ``cost(state [B, S], action [B, A]) -> [B]`` is the running cost of taking ``action`` in
  ``state``; ``terminal_cost(state [B, S]) -> [B]`` is charged on the last predicted state.
  The objective of a plan ``a_0..a_{T-1}`` from ``s_0`` is
  ``J = sum_t gamma^t [c(s_t, a_t) + w_u u(s_t, a_t)] + gamma^T c_T(s_T)`` with
  ``s_{t+1} = f(s_t, a_t)`` and ``u`` the optional uncertainty penalty.
* ``plan(state [B, S]) -> actions [B, T, A]`` solves B independent problems at once on the
  device and dtype of ``state``; ``act(state) -> [B, A]`` plans, returns the first action,
  and keeps the plan shifted by one step as the warm start of the next call.

Length: every planner's shared machinery (argument checks, the fused and plain rollouts,
warm start, validation of the user's callables once per shape) is what a planner
subclass relies on; splitting it would spread one contract over several files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from worldplan.worldmodels.contract import ModelState, rows_of

log = logging.getLogger(__name__)

Dynamics = Callable[..., torch.Tensor]
Cost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TerminalCost = Callable[[torch.Tensor], torch.Tensor]
Uncertainty = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BoundLike = float | Sequence[float] | torch.Tensor

__all__ = ["Planner", "as_bounds", "model_dims"]

# Elements of the stacked trajectory above which costs are charged step by step (memory).
_FUSE_LIMIT = 1 << 24


def model_dims(fn: object) -> tuple[int | None, int | None]:
    """``(state_dim, action_dim)`` of the world model behind a dynamics callable, or None
    for each size it does not declare. Looks through bound methods (``model.step``) and
    wrappers that set ``__wrapped__`` (e.g. ``TruckTaskModel.stop_at_wall``)."""
    seen = 0
    while fn is not None and seen < 8:
        owner = getattr(fn, "__self__", None)
        for obj in (fn, owner):
            s, a = getattr(obj, "state_dim", None), getattr(obj, "action_dim", None)
            if isinstance(s, int) or isinstance(a, int):
                return (s if isinstance(s, int) else None, a if isinstance(a, int) else None)
        fn = getattr(fn, "__wrapped__", None)
        seen += 1
    return None, None


def as_bounds(action_low: BoundLike, action_high: BoundLike,
              action_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate action bounds and return them as float32 CPU tensors ``[A]``.

    Scalars are broadcast to ``action_dim`` (1 when not given); anything but a 1-D vector
    of the same length for both, finite and with ``low < high``, raises ``ValueError``.
    """
    tensors = []
    for name, value in (("action_low", action_low), ("action_high", action_high)):
        try:
            t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a number, a sequence or a tensor, got "
                            f"{type(value).__name__}") from None
        if t.ndim == 0:
            t = t.repeat(action_dim or 1)
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a vector [A], got shape {list(t.shape)}")
        if action_dim is not None and t.shape[0] != action_dim:
            raise ValueError(f"{name} must have shape [{action_dim}], got {list(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite, got {t.tolist()}")
        tensors.append(t)
    low, high = tensors
    if low.shape != high.shape:
        raise ValueError(f"action_low and action_high must have the same shape, got "
                         f"{list(low.shape)} and {list(high.shape)}")
    if not (low < high).all():
        raise ValueError(f"action_low must be below action_high in every dimension, got "
                         f"{low.tolist()} and {high.tolist()}")
    return low, high


def _all_finite(x: torch.Tensor) -> bool:
    """Is every element of ``x`` finite? A finite sum settles it in two small ops (NaN and
    inf propagate into the sum); only a sum that overflowed needs the elementwise check,
    which costs five (``isfinite`` is composite)."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, "
                         f"got {value}")
    return value


class _Rollout:
    """The preallocated trajectory buffer of the fast rollout and the views made once.

    ``actions [A, T, M]`` is the caller's candidate buffer (``M = B * N``, problem-major);
    the predicted states go into ``states [S, T, M]``. Both are column-major per step
    (``[M, A]``/``[M, S]`` views with unit stride along the rows), so the user's elementwise
    maths reads contiguous columns, and the running cost sees all ``T * M`` rows at once.
    """

    def __init__(self, actions: torch.Tensor, s: int, b: int, n: int) -> None:
        a, t, m = actions.shape
        self.actions, self.key = actions, (s, b, n)
        self.states = torch.empty(s, t, m, device=actions.device, dtype=actions.dtype)
        self.u_steps = actions.permute(1, 2, 0).unbind(0)  # T views [M, A]
        self.x_steps = self.states.permute(1, 2, 0).unbind(0)  # T views [M, S]
        # the start state of every candidate, [B, S, N] (a state's [B, S, 1] view copies in)
        self.x_first = self.states[:, 0].view(s, b, n).permute(1, 0, 2)
        self.xs = self.states.view(s, t * m).T  # [T*M, S], step-major rows
        # (state view, action view, the next state's view or None at the last step)
        self.steps = tuple(zip(self.x_steps, self.u_steps, (*self.x_steps[1:], None),
                               strict=True))
        self.us = actions.view(a, t * m).T


class Planner:
    """Base class: a receding-horizon trajectory optimiser over ``[B, T, A]`` action plans.

    Subclasses implement :meth:`_optimize`. Arguments common to all planners:

    Args:
        dynamics: ``(state [B, S], action [B, A][, z [B, Z]]) -> [B, S]``.
        cost: running cost ``(state [B, S], action [B, A]) -> [B]``.
        action_low, action_high: bounds ``[A]`` (scalars broadcast to ``action_dim``).
        horizon: number of planned steps ``T >= 1``.
        terminal_cost: ``state [B, S] -> [B]`` on the last predicted state, or None.
        latent_dim: size of the dynamics' latent ``z`` (0: the dynamics take no ``z``).
        z_samples: latent samples per plan; the objective is reduced over them by
            ``z_reduce`` ("mean": expected cost; "min": optimistic, minimised over z).
        uncertainty: optional ``(state [B, S], action [B, A]) -> [B]`` penalty (e.g. a
            world model's MC-dropout variance), weighted by ``uncertainty_weight``.
        discount: per-step discount ``gamma`` in (0, 1].
        action_dim: needed only when both bounds are scalars and ``A > 1``.
        state_dim: the task's state size ``S``; when given (or when the dynamics is a world
            model that declares ``state_dim``), states of another size are refused before
            any work, and so is a model whose declared ``state_dim``/``action_dim``
            differs from the task's.
        seed: seed of the planner's own random generator.
        compile: fuse the rollout (dynamics + costs over the horizon) with
            ``torch.compile`` on first use (slow to compile, then faster per step; falls
            back to eager execution if compilation fails).
    """

    def __init__(self, dynamics: Dynamics, cost: Cost, action_low: BoundLike,
                 action_high: BoundLike, horizon: int,
                 terminal_cost: TerminalCost | None = None, *, latent_dim: int = 0,
                 z_samples: int = 1, z_reduce: Literal["mean", "min"] = "mean",
                 uncertainty: Uncertainty | None = None, uncertainty_weight: float = 0.0,
                 discount: float = 1.0, action_dim: int | None = None,
                 state_dim: int | None = None, seed: int = 0, compile: bool = False) -> None:
        for name, fn in (("dynamics", dynamics), ("cost", cost)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        for name, fn in (("terminal_cost", terminal_cost), ("uncertainty", uncertainty)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
        self.dynamics = dynamics
        self.cost = cost
        self.terminal_cost = terminal_cost
        self.uncertainty = uncertainty
        self.action_low, self.action_high = as_bounds(action_low, action_high, action_dim)
        self.action_dim = int(self.action_low.shape[0])
        self.state_dim = None if state_dim is None else _check_int("state_dim", state_dim, 1)
        model_s, model_a = model_dims(dynamics)
        if model_a is not None and model_a != self.action_dim:
            raise ValueError(f"the dynamics model takes {model_a}-D actions but the task's "
                             f"action bounds are {self.action_dim}-D")
        if model_s is not None and self.state_dim is not None and model_s != self.state_dim:
            raise ValueError(f"the dynamics model has {model_s}-D states but the task's "
                             f"state_dim is {self.state_dim}")
        if self.state_dim is None:
            self.state_dim = model_s
        self.horizon = _check_int("horizon", horizon, 1)
        self.latent_dim = _check_int("latent_dim", latent_dim, 0)
        self.z_samples = _check_int("z_samples", z_samples, 1) if latent_dim > 0 else 1
        if z_reduce not in ("mean", "min"):
            raise ValueError(f"z_reduce must be 'mean' or 'min', got {z_reduce!r}")
        self.z_reduce = z_reduce
        self.uncertainty_weight = _check_positive("uncertainty_weight", uncertainty_weight, True)
        if uncertainty_weight > 0 and uncertainty is None:
            raise ValueError("uncertainty_weight > 0 needs an uncertainty callable")
        discount = float(discount)
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.discount = discount
        self.seed = int(seed)
        self.compile = bool(compile)
        self._compiled: Callable | None = None
        self._generator: torch.Generator | None = None
        self._plan: torch.Tensor | None = None  # warm start [B, T, A]
        self._validated: tuple | None = None  # (state_dim, device, dtype) already checked
        self._bounds_cache: dict = {}
        self._shift_index: dict = {}
        self._fused = True  # callables accept column-major views (see _rollout_impl)
        self._fast: _Rollout | None = None  # buffers of _rollout_columns
        self._discounts: dict = {}

    # -- public API -------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start (a new episode); reseed the generator if ``seed`` is given."""
        self._plan = None
        if seed is not None:
            self.seed = int(seed)
            self._generator = None

    @property
    def warm_start(self) -> torch.Tensor | None:
        """The kept plan ``[B, T, A]`` the next call starts from (None after ``reset``)."""
        return self._plan

    def plan(self, state: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """Optimise B independent plans from ``state [B, S]``; returns ``actions [B, T, A]``
        inside the bounds. The result is kept as the next warm start. ``init [B, T, A]``
        (inside the bounds) replaces the kept warm start for this call."""
        return self._solve(state, init).clone()

    def _solve(self, state: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        """:meth:`plan` without the defensive copy: the kept warm start itself."""
        self._validate(state)
        low, high = self._bounds(state)
        if init is not None:
            init = self._check_init(init, state, low, high)
        else:
            init = self._plan
        if init is not None and (init.shape[0] != state.shape[0] or init.device != state.device
                                 or init.dtype != state.dtype):
            init = None
        if init is None:
            init = self._initial_plan(state)
        if self._needs_grad:
            with torch.enable_grad():
                plan = self._optimize(state.detach(), init.detach())
        elif not torch.is_grad_enabled():  # the caller's no_grad (no context to enter)
            plan = self._optimize(state, init)
        else:  # nothing is recorded under no_grad: no detached copies needed
            with torch.no_grad():
                plan = self._optimize(state, init)
        if not self._returns_checked_plan:
            plan = torch.clamp(plan.detach(), low, high)
            # clamped to finite bounds: NaN is the only non-finite value that can remain
            if torch.isnan(plan).any():
                raise ValueError(f"{type(self).__name__} produced a non-finite plan: the "
                                 "dynamics or cost returned NaN/inf along the way")
        self._plan = plan
        return plan

    def act(self, state: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """Receding horizon: plan from ``state [B, S]`` (from ``init [B, T, A]`` if given,
        else the kept warm start), return the first action ``[B, A]`` and keep the plan
        shifted by one step (last action repeated) as the next warm start."""
        # the plan is not handed out (only its first action), so no copy of it; a subclass
        # that overrides plan() is still called
        plan = (self._solve(state, init) if type(self).plan is Planner.plan
                else self.plan(state, init))
        self._plan = self._shift(plan)
        return plan[:, 0]

    def objective(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Cost ``J`` of plans ``actions [B, T, A]`` (or candidates ``[B, N, T, A]``) from
        ``state [B, S]``; returns ``[B]`` (or ``[B, N]``). Differentiable."""
        self._validate(state)
        if actions.ndim == 3:
            return self._rollout_cost(state, actions[:, None])[:, 0]
        return self._rollout_cost(state, actions)

    def _check_init(self, init: torch.Tensor, state: torch.Tensor, low: torch.Tensor,
                    high: torch.Tensor) -> torch.Tensor:
        """A user's warm start: a finite ``[B, T, A]`` tensor inside the bounds."""
        if not isinstance(init, torch.Tensor):
            raise TypeError(f"init must be a torch.Tensor [B, T, A], got {type(init).__name__}")
        want = (state.shape[0], self.horizon, self.action_dim)
        if tuple(init.shape) != want:
            raise ValueError(f"init must have shape [B={want[0]}, T={want[1]}, A={want[2]}], "
                             f"got {list(init.shape)}")
        init = init.detach().to(state.device, state.dtype)
        if not torch.isfinite(init).all():
            raise ValueError("init contains NaN or inf")
        tol = 1e-6 * (high - low)
        outside = (init < low - tol) | (init > high + tol)
        if outside.any():
            raise ValueError(f"init has {int(outside.sum())} actions outside the bounds "
                             f"[{self.action_low.tolist()}, {self.action_high.tolist()}] "
                             f"(range {float(init.min()):.4g} to {float(init.max()):.4g})")
        return torch.max(torch.min(init, high), low)

    # -- for subclasses -------------------------------------------------------------------
    _needs_grad = False
    # Whether _optimize returns a plan already inside the bounds and free of NaN (raising
    # itself otherwise), so that _solve need not clip and check it again.
    _returns_checked_plan = False
    # Whether the planner can plan from a world model's ModelState (it only repeats rows
    # and calls the dynamics and costs); linearising planners need vector states.
    structured_states = True

    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        """``state [B, S]``, warm start ``init [B, T, A]`` -> plan ``[B, T, A]``."""
        raise NotImplementedError

    def _initial_plan(self, state: torch.Tensor) -> torch.Tensor:
        """The plan of a cold start: the middle of the bounds, ``[B, T, A]``."""
        low, high = self._bounds(state)
        mid = (low + high) / 2
        return mid.expand(state.shape[0], self.horizon, self.action_dim).clone()

    def _shift(self, plan: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``plan`` advanced by one step along its time axis ``dim`` (the last step
        repeated): a new tensor, by one ``index_select`` with a cached index."""
        t = plan.shape[dim]
        key = (t, plan.device)
        index = self._shift_index.get(key)
        if index is None:
            index = self._shift_index[key] = torch.cat([
                torch.arange(1, t, device=plan.device),
                torch.tensor([t - 1], device=plan.device)])
        return plan.index_select(dim, index)

    def _bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._bounds_cache:
            self._bounds_cache[key] = (self.action_low.to(like.device, like.dtype),
                                       self.action_high.to(like.device, like.dtype))
        return self._bounds_cache[key]

    def generator(self, device: torch.device) -> torch.Generator:
        """The planner's seeded generator on ``device``."""
        if self._generator is None or self._generator.device != torch.device(device):
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generator = g
        return self._generator

    def _sample_z(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """Latents ``[T, n, Z]`` from N(0, I)."""
        return torch.randn(self.horizon, n, self.latent_dim, device=like.device, dtype=like.dtype,
                           generator=self.generator(like.device))

    def _step(self, state: torch.Tensor, action: torch.Tensor,
              z: torch.Tensor | None) -> torch.Tensor:
        if self.latent_dim > 0:
            return self.dynamics(state, action, z)
        return self.dynamics(state, action)

    def _rollout_cost(self, state: torch.Tensor, actions: torch.Tensor,
                      z: torch.Tensor | None = None, allow_compile: bool = True
                      ) -> torch.Tensor:
        """Objective ``[B, N]`` of candidate plans ``actions [B, N, T, A]`` from ``state [B, S]``.

        With a latent, each candidate is rolled out under ``z_samples`` draws (``z`` may be
        given as ``[T, B*N*K, Z]``) and the costs are reduced by ``z_reduce``.
        """
        b, n, t, a = actions.shape
        k = self.z_samples
        x = rows_of(state, n * k)  # [B*N*K, S]: row i of state repeated N*K times
        u_all = actions[:, :, None].expand(b, n, k, t, a).reshape(b * n * k, t, a)
        if self.latent_dim > 0 and z is None:
            z = self._sample_z(b * n * k, state)
        rollout = self._rollout_impl
        if self.compile and allow_compile:
            if self._compiled is None:
                self._compiled = torch.compile(self._rollout_loop, dynamic=False)
            rollout = self._compiled
        try:
            total = rollout(x, u_all, z)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
            if rollout is self._rollout_impl:
                raise
            log.warning("torch.compile of the rollout failed (%s); running eagerly", exc)
            self.compile = False
            total = self._rollout_impl(x, u_all, z)
        total = total.reshape(b, n, k)
        if k == 1:
            return total[..., 0]
        return total.mean(-1) if self.z_reduce == "mean" else total.amin(-1)

    def _rollout_impl(self, x: torch.Tensor, u_all: torch.Tensor,
                      z: torch.Tensor | None) -> torch.Tensor:
        """Summed cost ``[M]`` of ``u_all [M, T, A]`` from ``x [M, S]`` (``z [T, M, Z]``).

        The eager path keeps the trajectory column-major (``[S, T, M]``: each state
        component contiguous, so elementwise maths such as ``atan2`` vectorises), steps
        the dynamics through it, and charges the running cost (and uncertainty) in one call
        on all ``T * M`` rows instead of once per step: the per-call overhead, not the
        arithmetic, dominates at a thousand samples. Callables that do not accept such
        views (checked once in :meth:`_validate`) and very large rollouts take the plain
        step-by-step loop.
        """
        m, t, a = u_all.shape
        s = x.shape[1]
        if (not self._fused or isinstance(x, ModelState) or m * t * max(s, a) > _FUSE_LIMIT
                or torch.compiler.is_compiling()):
            return self._rollout_loop(x, u_all, z)
        u_cols = u_all.permute(2, 1, 0).contiguous()  # [A, T, M]
        u_steps = u_cols.permute(1, 2, 0).unbind(0)  # T column-major [M, A] views
        z_steps = z.unbind(0) if z is not None else (None,) * t
        if torch.is_grad_enabled():
            # Under autograd a step's input must not be overwritten later: separate columns.
            cols = []
            for u, zi in zip(u_steps, z_steps, strict=True):
                xc = x.T.contiguous()
                cols.append(xc)
                x = self._step(xc.T, u, zi)
            states = torch.stack(cols, dim=1)
        else:  # one preallocated trajectory buffer, filled in place
            states = torch.empty(s, t, m, device=x.device, dtype=x.dtype)
            steps = zip(states.permute(1, 2, 0).unbind(0), u_steps, z_steps, strict=True)
            for xc, u, zi in steps:
                xc.copy_(x)
                x = self._step(xc, u, zi)
        xs = states.view(s, t * m).T  # [T*M, S], step-major rows
        us = u_cols.view(a, t * m).T
        step_cost = self.cost(xs, us)
        if self.uncertainty is not None and self.uncertainty_weight > 0:
            step_cost = step_cost + self.uncertainty_weight * self.uncertainty(xs, us)
        step_cost = step_cost.view(t, m)
        if self.discount < 1.0:
            weights = self.discount ** torch.arange(t, device=x.device, dtype=x.dtype)
            total = weights @ step_cost
        else:
            total = step_cost.sum(0)
        if self.terminal_cost is not None:
            total = total + self.discount ** t * self.terminal_cost(x)
        return total

    def _fast_rollout(self, state: torch.Tensor, actions: torch.Tensor,
                      n: int) -> _Rollout | None:
        """The buffers of :meth:`_rollout_columns` for the candidate buffer ``actions
        [A, T, B*n]`` from ``state [B, S]``, or None when the general rollout must run (a
        latent, a ModelState, autograd, tracing, callables that refuse column-major views,
        or a rollout above the fusing limit)."""
        if (not self._fused or self.latent_dim > 0 or isinstance(state, ModelState)
                or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or actions.shape[2] * actions.shape[1] * max(state.shape[1], actions.shape[0])
                > _FUSE_LIMIT):
            return None
        key = (state.shape[1], state.shape[0], n)
        fast = self._fast
        if fast is None or fast.actions is not actions or fast.key != key:
            fast = self._fast = _Rollout(actions, *key)
        return fast

    def _rollout_columns(self, state: torch.Tensor, fast: _Rollout) -> torch.Tensor:
        """Objective ``[B, N]`` of the candidates in ``fast.actions [A, T, B*N]`` from
        ``state [B, S]``: :meth:`_rollout_impl` without its per-call layout work (the
        buffers and their views exist already; the start state is broadcast, not repeated).
        No autograd, no latent."""
        s, b, n = fast.key
        fast.x_first.copy_(state.unsqueeze(-1))
        dynamics = self.dynamics
        for xc, u, x_next in fast.steps:
            x = dynamics(xc, u)
            if x_next is not None:
                x_next.copy_(x)
        step_cost = self.cost(fast.xs, fast.us)
        if self.uncertainty is not None and self.uncertainty_weight > 0:
            step_cost = step_cost + self.uncertainty_weight * self.uncertainty(fast.xs, fast.us)
        t = len(fast.steps)
        step_cost = step_cost.reshape(t, b * n)
        if self.discount < 1.0:
            total = self._discount_weights(t, state) @ step_cost
        else:
            total = step_cost.sum(0)
        if self.terminal_cost is not None:
            terminal = self.terminal_cost(x)
            total = total + (terminal if self.discount == 1.0
                             else self.discount ** t * terminal)
        return total.view(b, n)

    def _discount_weights(self, t: int, like: torch.Tensor) -> torch.Tensor:
        """``[gamma^0 .. gamma^(t-1)]`` on ``like``'s device and dtype (cached)."""
        key = (t, like.device, like.dtype, self.discount)
        if key not in self._discounts:
            self._discounts[key] = self.discount ** torch.arange(t, device=like.device,
                                                                 dtype=like.dtype)
        return self._discounts[key]

    def _rollout_loop(self, x: torch.Tensor, u_all: torch.Tensor,
                      z: torch.Tensor | None) -> torch.Tensor:
        """The reference rollout: dynamics and cost step by step (what ``torch.compile``
        traces, and the fallback of :meth:`_rollout_impl`)."""
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        weight = 1.0
        for i in range(u_all.shape[1]):
            u = u_all[:, i]
            step_cost = self.cost(x, u)
            if self.uncertainty is not None and self.uncertainty_weight > 0:
                step_cost = step_cost + self.uncertainty_weight * self.uncertainty(x, u)
            total = total + weight * step_cost
            x = self._step(x, u, z[i] if z is not None else None)
            weight *= self.discount
        if self.terminal_cost is not None:
            total = total + weight * self.terminal_cost(x)
        return total

    # -- validation -----------------------------------------------------------------------
    def _validate(self, state: torch.Tensor | ModelState) -> None:
        """Check ``state`` and, once per (S, device, dtype), every callable's output."""
        structured = isinstance(state, ModelState)
        if not structured and not isinstance(state, torch.Tensor):
            raise TypeError("state must be a torch.Tensor [B, S] or a world model's "
                            f"ModelState, got {type(state).__name__}")
        if len(state.shape) != 2 or state.shape[0] < 1 or state.shape[1] < 1:
            raise ValueError(f"state must have shape [B, S], got {list(state.shape)}")
        if not state.dtype.is_floating_point:
            raise TypeError(f"state must be a floating-point tensor, got {state.dtype}")
        if self.state_dim is not None and state.shape[1] != self.state_dim:
            raise ValueError(f"state has {state.shape[1]} components per row but the task "
                             f"and dynamics model have state_dim {self.state_dim}")
        if not (state.is_finite() if structured else _all_finite(state)):
            raise ValueError("state contains NaN or inf")
        if structured and not self.structured_states:
            raise TypeError(f"{type(self).__name__} needs vector states [B, S]; plan through "
                            "an image model with CEM, MPPI or GradientMPC")
        key = (state.shape[1], state.device, state.dtype)
        if self._validated == key:
            return
        b, s = state.shape
        low, high = self._bounds(state)
        action = ((low + high) / 2).expand(b, self.action_dim)
        with torch.no_grad():
            z = None
            if self.latent_dim > 0:
                z = torch.zeros(b, self.latent_dim, device=state.device, dtype=state.dtype)
            zdesc = f" and z [B, {self.latent_dim}]" if z is not None else ""
            nxt = self._call("dynamics", lambda: self._step(state, action, z),
                             f"state [B={b}, S={s}] and action [B={b}, A={self.action_dim}]"
                             + zdesc)
            if structured:
                if not isinstance(nxt, ModelState) or tuple(nxt.shape) != (b, s):
                    raise ValueError("dynamics must map a ModelState [B, S] to a ModelState of "
                                     f"the same shape, got {type(nxt).__name__}")
            else:
                self._check_output("dynamics", nxt, (b, s))
            self._check_output("cost", self._call("cost", lambda: self.cost(state, action),
                                                  "state [B, S] and action [B, A]"), (b,))
            if self.terminal_cost is not None:
                self._check_output("terminal_cost", self._call(
                    "terminal_cost", lambda: self.terminal_cost(nxt), "state [B, S]"), (b,))
            if self.uncertainty is not None:
                self._check_output("uncertainty", self._call(
                    "uncertainty", lambda: self.uncertainty(state, action),
                    "state [B, S] and action [B, A]"), (b,))
            # a ModelState (an image model's frames) is stepped as it is, row-major
            self._fused = not structured and self._accepts_column_major(state, action, z)
        self._validated = key

    def _accepts_column_major(self, state: torch.Tensor, action: torch.Tensor,
                              z: torch.Tensor | None) -> bool:
        """Do the callables give the same results on column-major views as on contiguous
        rows (what the fused rollout feeds them)? A callable that calls ``.view`` on its
        input, for one, does not: the planner then uses the plain loop."""
        rows_x = state[:1].expand(2, -1).contiguous()
        rows_x[1] = rows_x[1] * 0.9 + 0.01  # two different rows
        rows_u = action[:1].expand(2, -1).contiguous()
        zz = None if z is None else z[:1].expand(2, -1).contiguous()
        col_x, col_u = rows_x.T.contiguous().T, rows_u.T.contiguous().T
        pairs = [(lambda xx, uu: self._step(xx, uu, zz)), self.cost]
        if self.uncertainty is not None:
            pairs.append(self.uncertainty)
        try:
            for fn in pairs:
                want, got = fn(rows_x, rows_u), fn(col_x, col_u)
                if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4,
                                                                 atol=1e-5, equal_nan=True):
                    return False
        except (RuntimeError, IndexError, TypeError, ValueError):
            return False
        return True

    @staticmethod
    def _call(name: str, fn: Callable[[], object], given: str) -> object:
        try:
            return fn()
        except (RuntimeError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{name} failed on {given}: {exc}") from exc

    @staticmethod
    def _check_output(name: str, value: object, shape: tuple[int, ...]) -> None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must return a torch.Tensor of shape {list(shape)}, got "
                             f"{type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} returned shape {list(value.shape)}, expected {list(shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} returned non-finite values (NaN or inf)")
