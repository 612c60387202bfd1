"""Linear-quadratic regulators: infinite-horizon discrete LQR (``dlqr``), a receding-horizon
``LQR`` planner for linear dynamics, and ``ILQR`` for any differentiable dynamics with
Jacobians and cost Hessians from autograd (``torch.func.jacrev``), batched over problems."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg
import torch

from worldplan.planners.mpc.base import BoundLike, Planner, _check_int, _check_positive

log = logging.getLogger(__name__)

__all__ = ["ILQR", "LQR", "batch_jacobian", "dare", "dlqr", "linearize"]

ArrayLike = np.ndarray | torch.Tensor | Sequence


def _matrix(name: str, value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a matrix (numpy array or tensor)") from None
    if m.ndim == 0:
        m = m.reshape(1, 1)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {list(m.shape)}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or inf")
    return m


def _dare(A: ArrayLike, B: ArrayLike, Q: ArrayLike, R: ArrayLike, iterations: int,
          tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked float64 ``(a, b, q, r, P)`` with ``P`` the solution of the discrete Riccati
    equation (scipy, falling back to the Riccati iteration when scipy cannot)."""
    a, b, q, r = _matrix("A", A), _matrix("B", B), _matrix("Q", Q), _matrix("R", R)
    s = a.shape[0]
    if a.shape != (s, s):
        raise ValueError(f"A must be square [S, S], got {list(a.shape)}")
    if b.shape[0] != s:
        raise ValueError(f"B must have shape [S={s}, A], got {list(b.shape)}")
    m = b.shape[1]
    if q.shape != (s, s):
        raise ValueError(f"Q must have shape [{s}, {s}], got {list(q.shape)}")
    if r.shape != (m, m):
        raise ValueError(f"R must have shape [{m}, {m}], got {list(r.shape)}")
    if np.linalg.eigvalsh((r + r.T) / 2).min() <= 0:
        raise ValueError("R must be symmetric positive definite")
    if np.linalg.eigvalsh((q + q.T) / 2).min() < -1e-12:
        raise ValueError("Q must be symmetric positive semi-definite")
    try:
        p = scipy.linalg.solve_discrete_are(a, b, q, r)
    except (np.linalg.LinAlgError, ValueError):
        log.debug("solve_discrete_are failed; using the Riccati iteration")
        p = q.copy()
        for _ in range(iterations):
            k = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
            p_new = q + a.T @ p @ (a - b @ k)
            if np.abs(p_new - p).max() < tol * max(1.0, np.abs(p).max()):
                p = p_new
                break
            p = p_new
        else:
            raise ValueError("dlqr: the Riccati iteration did not converge; is (A, B) "
                             "stabilisable?")
    return a, b, q, r, p


def dlqr(A: ArrayLike, B: ArrayLike, Q: ArrayLike, R: ArrayLike,
         iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray | torch.Tensor:
    """Infinite-horizon discrete LQR gain ``K [A, S]`` (control ``u = -K x``) for
    ``x' = A x + B u`` and cost ``sum x^T Q x + u^T R u``.

    Solves the discrete algebraic Riccati equation with scipy, falling back to the Riccati
    iteration when scipy cannot. Returns a tensor when ``A`` is a tensor (same dtype and
    device), else a numpy array.
    """
    a, b, _, r, p = _dare(A, B, Q, R, iterations, tol)
    k = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
    if isinstance(A, torch.Tensor):
        return torch.as_tensor(k, dtype=A.dtype, device=A.device)
    return k


def dare(A: ArrayLike, B: ArrayLike, Q: ArrayLike, R: ArrayLike,
         iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray | torch.Tensor:
    """The LQR cost-to-go matrix ``P [S, S]``: ``min sum_t x_t^T Q x_t + u_t^T R u_t`` from
    ``x_0`` is ``x_0^T P x_0`` (the discrete algebraic Riccati equation's solution).

    As a terminal cost ``x^T P x`` it stands in for the infinite tail beyond an MPC horizon
    near the point ``(A, B)`` linearise. Tensor in -> tensor out, as :func:`dlqr`.
    """
    *_, p = _dare(A, B, Q, R, iterations, tol)
    p = (p + p.T) / 2  # exactly symmetric
    if isinstance(A, torch.Tensor):
        return torch.as_tensor(p, dtype=A.dtype, device=A.device)
    return p


def batch_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
                   ) -> torch.Tensor:
    """Per-row Jacobians of a batch-independent ``fn: [N, D] -> [N, O]``: ``[N, O, D]``.

    Uses ``torch.func.jacrev`` of ``fn(x).sum(0)`` (exact because row ``n`` of the output
    depends only on row ``n`` of the input), with a loop of ``autograd.grad`` as a fallback
    for functions ``torch.func`` cannot transform.
    """
    try:
        jac = torch.func.jacrev(lambda x: fn(x).sum(0))(inputs)  # [O, N, D]
        return jac.permute(1, 0, 2)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        log.debug("jacrev failed (%s); using autograd loop", exc)
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        out = fn(x)
        rows = [torch.autograd.grad(out[:, i].sum(), x, retain_graph=True, allow_unused=True)[0]
                for i in range(out.shape[1])]
    rows = [r if r is not None else torch.zeros_like(inputs) for r in rows]
    return torch.stack(rows, dim=1)


def linearize(dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobians of ``dynamics`` at ``state [B, S]``, ``action [B, A]``:
    ``A = df/dx [B, S, S]`` and ``B = df/du [B, S, A]``."""
    s = state.shape[-1]
    xu = torch.cat([state, action], dim=-1).detach()
    jac = batch_jacobian(lambda v: dynamics(v[:, :s], v[:, s:]), xu)
    return jac[..., :s], jac[..., s:]


class LQR(Planner):
    """Receding-horizon LQR for ``x' = A x + B u`` with cost
    ``(x - x_goal)^T Q (x - x_goal) + (u - u_goal)^T R (u - u_goal)``.

    The gain is the infinite-horizon ``dlqr`` gain; ``plan`` rolls the clipped feedback law
    ``u = u_goal - K (x - x_goal)`` forward for ``horizon`` steps through the linear model.
    ``A, B`` may come from :func:`linearize` of nonlinear dynamics at an equilibrium.
    """

    structured_states = False  # a linear model of vector states

    def __init__(self, A: ArrayLike, B: ArrayLike, Q: ArrayLike, R: ArrayLike,
                 action_low: BoundLike, action_high: BoundLike, horizon: int = 1,
                 x_goal: ArrayLike | None = None, u_goal: ArrayLike | None = None,
                 **kwargs) -> None:
        a, b, q, r = _matrix("A", A), _matrix("B", B), _matrix("Q", Q), _matrix("R", R)
        self.K = torch.as_tensor(dlqr(a, b, q, r), dtype=torch.float32)
        s, m = b.shape
        self.A_mat = torch.as_tensor(a, dtype=torch.float32)
        self.B_mat = torch.as_tensor(b, dtype=torch.float32)
        self.Q_mat = torch.as_tensor(q, dtype=torch.float32)
        self.R_mat = torch.as_tensor(r, dtype=torch.float32)
        self.x_goal = self._vector("x_goal", x_goal, s)
        self.u_goal = self._vector("u_goal", u_goal, m)
        super().__init__(self._linear, self._quadratic, action_low, action_high, horizon,
                         action_dim=m, **kwargs)
        if self.action_dim != m:
            raise ValueError(f"action bounds have {self.action_dim} entries but B has {m} "
                             "columns")

    @staticmethod
    def _vector(name: str, value: ArrayLike | None, n: int) -> torch.Tensor:
        if value is None:
            return torch.zeros(n)
        v = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1)
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape [{n}], got {list(v.shape)}")
        return v

    def _mat(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.device, like.dtype)

    def _linear(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x @ self._mat(self.A_mat, x).T + u @ self._mat(self.B_mat, x).T

    def _quadratic(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        dx = x - self._mat(self.x_goal, x)
        du = u - self._mat(self.u_goal, x)
        return ((dx @ self._mat(self.Q_mat, x)) * dx).sum(-1) + \
            ((du @ self._mat(self.R_mat, x)) * du).sum(-1)

    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        low, high = self._bounds(state)
        k = self._mat(self.K, state)
        xg, ug = self._mat(self.x_goal, state), self._mat(self.u_goal, state)
        x = state
        actions = []
        for _ in range(self.horizon):
            u = torch.max(torch.min(ug - (x - xg) @ k.T, high), low)
            actions.append(u)
            x = self._linear(x, u)
        return torch.stack(actions, dim=1)


class ILQR(Planner):
    """Iterative LQR (Li & Todorov 2004; Tassa et al. 2012) for differentiable dynamics.

    Each iteration linearises the dynamics and quadratises the cost along the current plan
    (all ``T`` steps of all ``B`` problems in one batched autograd call), runs the Riccati
    backward pass with Levenberg-Marquardt regularisation ``mu`` (per problem), and a
    forward pass that tries the step sizes ``alphas`` in parallel, keeping per problem the
    best one that lowers the cost. Bounds are kept by clipping in the forward pass.
    With a latent (``latent_dim > 0``) the dynamics are planned at ``z = 0``.

    Args (besides :class:`~planners.mpc.base.Planner`'s):
        iterations: iLQR iterations per call.
        mu: initial regularisation; ``mu_factor`` its multiplicative change.
        alphas: line-search step sizes tried in parallel.
    """

    _needs_grad = True
    structured_states = False  # linearises the dynamics: vector states only

    def __init__(self, *args, iterations: int = 10, mu: float = 1e-3, mu_factor: float = 4.0,
                 mu_max: float = 1e8, alphas: Sequence[float] = (1.0, 0.5, 0.25, 0.1, 0.03),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.iterations = _check_int("iterations", iterations, 1)
        self.mu0 = _check_positive("mu", mu)
        self.mu_factor = _check_positive("mu_factor", mu_factor)
        if self.mu_factor <= 1:
            raise ValueError(f"mu_factor must be above 1, got {mu_factor}")
        self.mu_max = _check_positive("mu_max", mu_max)
        self.alphas = torch.as_tensor([float(a) for a in alphas])
        if self.alphas.numel() == 0 or not (self.alphas > 0).all():
            raise ValueError(f"alphas must be positive step sizes, got {list(alphas)}")
        self.last_costs: torch.Tensor | None = None

    def _f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.latent_dim > 0:
            z = torch.zeros(x.shape[0], self.latent_dim, device=x.device, dtype=x.dtype)
            return self.dynamics(x, u, z)
        return self.dynamics(x, u)

    def _run_cost(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        c = self.cost(x, u)
        if self.uncertainty is not None and self.uncertainty_weight > 0:
            c = c + self.uncertainty_weight * self.uncertainty(x, u)
        return c

    def _rollout(self, state: torch.Tensor, plan: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``[B, T+1, S]`` and total cost ``[B]`` of the open-loop ``plan``."""
        xs = [state]
        total = torch.zeros(state.shape[0], device=state.device, dtype=state.dtype)
        w = 1.0
        for t in range(self.horizon):
            total = total + w * self._run_cost(xs[-1], plan[:, t])
            xs.append(self._f(xs[-1], plan[:, t]))
            w *= self.discount
        if self.terminal_cost is not None:
            total = total + w * self.terminal_cost(xs[-1])
        return torch.stack(xs, dim=1), total

    def _derivatives(self, xs: torch.Tensor, plan: torch.Tensor):
        b, t, a = plan.shape
        s = xs.shape[-1]
        x = xs[:, :-1].reshape(b * t, s).detach()
        u = plan.reshape(b * t, a).detach()
        xu = torch.cat([x, u], dim=-1)
        f_jac = batch_jacobian(lambda v: self._f(v[:, :s], v[:, s:]), xu).reshape(b, t, s, s + a)

        def cost_grad(v: torch.Tensor) -> torch.Tensor:
            return batch_jacobian(lambda w: self._run_cost(w[:, :s], w[:, s:])[:, None], v)[:, 0]

        grad = cost_grad(xu)
        hess = batch_jacobian(cost_grad, xu)  # [BT, S+A, S+A]
        disc = self.discount ** torch.arange(t, device=xs.device, dtype=xs.dtype)
        grad = grad.reshape(b, t, s + a) * disc[None, :, None]
        hess = hess.reshape(b, t, s + a, s + a) * disc[None, :, None, None]
        xt = xs[:, -1].detach()
        if self.terminal_cost is not None:
            def term_grad(v: torch.Tensor) -> torch.Tensor:
                return batch_jacobian(lambda w: self.terminal_cost(w)[:, None], v)[:, 0]
            wt = self.discount ** t
            vx = term_grad(xt) * wt
            vxx = batch_jacobian(term_grad, xt) * wt
        else:
            vx = torch.zeros(b, s, device=xs.device, dtype=xs.dtype)
            vxx = torch.zeros(b, s, s, device=xs.device, dtype=xs.dtype)
        return f_jac, grad, hess, vx, vxx

    def _backward(self, f_jac, grad, hess, vx, vxx, mu: torch.Tensor):
        """Riccati recursion; returns gains ``k [B, T, A]``, ``K [B, T, A, S]`` and a per-problem
        flag of success (``Q_uu + mu I`` positive definite at every step)."""
        b, t, s, sa = f_jac.shape
        a = sa - s
        eye_a = torch.eye(a, device=vx.device, dtype=vx.dtype)
        ks = torch.zeros(b, t, a, device=vx.device, dtype=vx.dtype)
        gains = torch.zeros(b, t, a, s, device=vx.device, dtype=vx.dtype)
        ok = torch.ones(b, dtype=torch.bool, device=vx.device)
        for i in reversed(range(t)):
            fx, fu = f_jac[:, i, :, :s], f_jac[:, i, :, s:]
            lx, lu = grad[:, i, :s], grad[:, i, s:]
            lxx, luu, lux = hess[:, i, :s, :s], hess[:, i, s:, s:], hess[:, i, s:, :s]
            qx = lx + (fx.transpose(1, 2) @ vx[..., None])[..., 0]
            qu = lu + (fu.transpose(1, 2) @ vx[..., None])[..., 0]
            qxx = lxx + fx.transpose(1, 2) @ vxx @ fx
            quu = luu + fu.transpose(1, 2) @ vxx @ fu + mu[:, None, None] * eye_a
            qux = lux + fu.transpose(1, 2) @ vxx @ fx
            quu = (quu + quu.transpose(1, 2)) / 2
            chol, info = torch.linalg.cholesky_ex(quu)
            bad = info != 0
            ok = ok & ~bad
            chol = torch.where(bad[:, None, None], eye_a.expand_as(chol), chol)
            k = -torch.cholesky_solve(qu[..., None], chol)[..., 0]
            gain = -torch.cholesky_solve(qux, chol)
            k = torch.where(bad[:, None], torch.zeros_like(k), k)
            gain = torch.where(bad[:, None, None], torch.zeros_like(gain), gain)
            ks[:, i], gains[:, i] = k, gain
            gt = gain.transpose(1, 2)
            vx = qx + (gt @ quu @ k[..., None])[..., 0] + (gt @ qu[..., None])[..., 0] + \
                (qux.transpose(1, 2) @ k[..., None])[..., 0]
            vxx = qxx + gt @ quu @ gain + gt @ qux + qux.transpose(1, 2) @ gain
            vxx = (vxx + vxx.transpose(1, 2)) / 2
        return ks, gains, ok

    def _forward(self, state, xs, plan, ks, gains, low, high):
        """Closed-loop rollouts for every step size; ``[B, L, T, A]`` plans, ``[B, L]`` costs."""
        b, t, a = plan.shape
        alphas = self.alphas.to(state.device, state.dtype)
        n = alphas.shape[0]
        x = state[:, None].expand(b, n, state.shape[-1]).reshape(b * n, -1)
        total = torch.zeros(b * n, device=state.device, dtype=state.dtype)
        w = 1.0
        acts = []
        for i in range(t):
            dx = x.reshape(b, n, -1) - xs[:, i, None]
            u = plan[:, i, None] + alphas[None, :, None] * ks[:, i, None] + \
                (gains[:, i, None] @ dx[..., None])[..., 0]
            u = torch.max(torch.min(u, high), low).reshape(b * n, a)
            acts.append(u)
            total = total + w * self._run_cost(x, u)
            x = self._f(x, u)
            w *= self.discount
        if self.terminal_cost is not None:
            total = total + w * self.terminal_cost(x)
        return torch.stack(acts, 1).reshape(b, n, t, a), total.reshape(b, n)

    def _optimize(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        low, high = self._bounds(state)
        b = state.shape[0]
        plan = init.clone()
        mu = torch.full((b,), self.mu0, device=state.device, dtype=state.dtype)
        with torch.no_grad():
            xs, cost = self._rollout(state, plan)
        history = [cost]
        for _ in range(self.iterations):
            f_jac, grad, hess, vx, vxx = self._derivatives(xs, plan)
            with torch.no_grad():
                for _ in range(20):
                    ks, gains, ok = self._backward(f_jac, grad, hess, vx, vxx, mu)
                    if ok.all():
                        break
                    mu = torch.where(ok, mu, (mu * self.mu_factor).clamp(max=self.mu_max))
                cands, costs = self._forward(state, xs, plan, ks, gains, low, high)
                costs = costs.nan_to_num(float("inf"))
                costs = torch.where(ok[:, None], costs, torch.full_like(costs, float("inf")))
                best = costs.argmin(1)
                best_cost = costs.gather(1, best[:, None])[:, 0]
                improved = best_cost < cost
                new_plan = cands[torch.arange(b, device=state.device), best]
                plan = torch.where(improved[:, None, None], new_plan, plan)
                cost = torch.where(improved, best_cost, cost)
                mu = torch.where(improved, (mu / self.mu_factor).clamp(min=1e-8),
                                 (mu * self.mu_factor).clamp(max=self.mu_max))
                xs, _ = self._rollout(state, plan)
            history.append(cost)
        self.last_costs = torch.stack(history)
        return plan
