"""Gradient MPC of the truck with a hand-written adjoint (Kelley-Bryson) instead of autograd.

One planning iteration of :class:`~worldplan.experiments.truck_mpc.TruckMPC`'s gradient row
is a rollout of ``stop_at_wall(residual_dynamics(model, cascade))`` scored by the docking
cost, and the gradient of that cost with respect to the correction sequence. At batch 1 the
autograd graph of it (~90 nodes per predicted step over ~55 steps) is all per-node overhead.
Here the same rollout is written out in numpy, in the state's dtype (float32 in ``TruckMPC``,
as autograd plans; float64 too), with the intermediates the reverse pass needs kept, and
that reverse pass written by hand::

    x_{t+1} = f(x_t, v_t) = wall(x_t, model(x_t, clamp(cascade(x_t) + v_t)))
    lambda_T = dc_T/dx_T
    lambda_t = dc/dx_t + (df/dx_t)^T lambda_{t+1}
    dJ/dv_t  = (df/dv_t)^T lambda_{t+1}

A step is a few dozen ufuncs on ``[B]`` columns and one small matrix product per layer on
``[B, H]`` (through torch from 64 rows on, single-threaded as the caller set it): no graph,
and batch B >= 1 alike. Ties and kinks follow autograd's conventions (``minimum``/``maximum``
split the gradient at a tie, as a zero correction on a saturated cascade is; ``clamp``
passes it on the bound; ReLU stops it at 0), so the cost and the gradient equal autograd's
to float tolerance. Supported models: the truck's ``DeterministicModel`` emulator (ncond 1,
Linear/ReLU encoder and decoder of any depth and width, dropout inactive) and the true
kinematics; anything else is a ``ValueError``.

:class:`AdjointGradientMPC` is a drop-in for ``GradientMPC`` in ``TruckMPC`` (Adam on atanh
of the normalised correction, the best plan seen kept, exactly as ``GradientMPC`` steps).

Length: a forward pass and its reverse must be read side by side (every cached
intermediate, every kink), so the models, the rollout, its adjoint and the planner that
steps on it are one module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from worldplan.envs.truck import TruckTaskModel
from worldplan.experiments.truck_baselines import CascadeController
from worldplan.worldmodels.base import MCDropout, WorldModel
from worldplan.worldmodels.deterministic import DeterministicModel

__all__ = ["AdjointGradientMPC", "TruckAdjoint", "adjoint_model"]

_EDGE = 1.0 - 1e-4  # as GradientMPC: tanh kept away from +-1 so atanh stays finite
_TWO_PI = 2.0 * math.pi
_TORCH_ROWS = 64  # batch from which the matrix products go through torch (see _mm)


def _wrap(a: np.ndarray) -> np.ndarray:
    """``wrap_angle`` (torch's remainder has gradient 1, so the adjoint passes through)."""
    return np.mod(a + math.pi, _TWO_PI) - math.pi


# ------------------------------------------------------------------------------- models
class _Emulator:
    """A ``DeterministicModel`` (ncond 1, no active dropout) as numpy matrices.

    ``next = x + denorm(dec(relu(enc(norm(x))) + embed(norm(a))))``: the input and output
    normalisation are folded into the first, the action and the last layers. The weights
    are a copy taken at construction (float64, and float32 for float32 states).
    """

    def __init__(self, model: WorldModel) -> None:
        if type(model) is not DeterministicModel:
            raise ValueError(f"model: the adjoint supports the truck's DeterministicModel "
                             f"emulator, got {type(model).__name__}")
        if (model.state_dim, model.action_dim, model.ncond) != (4, 1, 1):
            raise ValueError(f"model: need state_dim 4, action_dim 1, ncond 1, got "
                             f"{model.state_dim}, {model.action_dim}, {model.ncond}")
        if model.dropout > 0 and model.dropout_active():
            raise ValueError("model: dropout is active (training or MC-dropout); the adjoint "
                             "is of the deterministic network: call model.eval()")
        f64 = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        sm, ss = f64(model.state_mean), f64(model.state_std)
        am, ast = f64(model.action_mean), f64(model.action_std)
        dm, ds = f64(model.delta_mean), f64(model.delta_std)
        enc, dec = _layers(model.encoder, "encoder"), _layers(model.decoder, "decoder")
        if not enc or enc[0][0] != "linear" or not dec or dec[-1][0] != "linear":
            raise ValueError("model: the encoder must start and the decoder end with a "
                             "Linear layer")
        # norm(x) = (x - sm) / ss into the first layer; denorm into the last
        w, b = enc[0][1], enc[0][2]
        enc[0] = ("linear", w / ss[:, None], b - (sm / ss) @ w)
        w, b = dec[-1][1], dec[-1][2]
        dec[-1] = ("linear", w * ds[None, :], b * ds + dm)
        wa = f64(model.action_embed.weight)[:, 0] / ast[0]  # [H]
        net = (enc, dec, wa, f64(model.action_embed.bias) - wa * am[0])
        # the same network in float32 (TruckMPC's states, as autograd plans them)
        cast = lambda op: (op[0], *(np.ascontiguousarray(a, np.float32) for a in op[1:]))  # noqa: E731
        self.nets = {np.dtype(np.float64): net,
                     np.dtype(np.float32): ([cast(op) for op in enc], [cast(op) for op in dec],
                                            wa.astype(np.float32), net[3].astype(np.float32))}

    def forward(self, x: np.ndarray, a: np.ndarray, record: bool = True
                ) -> tuple[np.ndarray, list | None]:
        """``x [B, 4], a [B] -> next [B, 4]`` and (``record``) the ReLU masks the reverse
        pass needs."""
        keep: list[np.ndarray] | None = [] if record else None
        enc, dec, embed_w, embed_b = self.nets[x.dtype]
        h = x
        for op in enc:
            h = _apply(op, h, keep)
        h = h + a[:, None] * embed_w + embed_b
        for op in dec:
            h = _apply(op, h, keep)
        return x + h, keep

    def backward(self, keep: list, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient ``g [B, 4]`` on ``next`` -> on ``x [B, 4]`` and on ``a [B]``."""
        gh, k = g, len(keep)
        enc, dec, embed_w, _ = self.nets[g.dtype]
        for op in reversed(dec):
            gh, k = _reverse(op, gh, keep, k)
        ga = gh @ embed_w
        for op in reversed(enc):
            gh, k = _reverse(op, gh, keep, k)
        return g + gh, ga


def _layers(module: nn.Module, name: str) -> list[tuple]:
    """A Sequential of Linear / ReLU / (inactive) dropout, flattened: ``("linear", W^T [in,
    out], b [out])`` and ``("relu",)``; anything else is refused."""
    out: list[tuple] = []
    for m in module.children() if isinstance(module, nn.Sequential) else [module]:
        if isinstance(m, nn.Sequential):
            out += _layers(m, name)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().cpu().double().numpy()
            b = (m.bias.detach().cpu().double().numpy() if m.bias is not None
                 else np.zeros(w.shape[0]))
            out.append(("linear", np.ascontiguousarray(w.T), b))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
        elif isinstance(m, (MCDropout, nn.Dropout)):
            continue  # inactive: checked by the caller
        else:
            raise ValueError(f"model: the adjoint supports Linear and ReLU layers, the "
                             f"{name} has a {type(m).__name__}")
    return out


def _apply(op: tuple, h: np.ndarray, keep: list | None) -> np.ndarray:
    if op[0] == "linear":
        return _mm(h, op[1]) + op[2]
    h = np.maximum(h, 0.0)
    if keep is not None:
        keep.append(h > 0)  # ReLU's autograd: no gradient where the input is <= 0
    return h


def _reverse(op: tuple, g: np.ndarray, keep: list, k: int) -> tuple[np.ndarray, int]:
    if op[0] == "linear":
        return _mm(g, op[1].T), k
    return g * keep[k - 1], k - 1


def _mm(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a [B, n] @ w [n, m]``; from ``_TORCH_ROWS`` rows through torch, whose thread count
    the caller sets (numpy's BLAS takes every core, which on a shared machine is slower)."""
    if a.shape[0] >= _TORCH_ROWS:
        return torch.from_numpy(a).matmul(torch.from_numpy(w)).numpy()
    return a @ w


class _Kinematics:
    """The true kinematics (``TruckTaskModel.step``: explicit Euler, steering clamped)."""

    def __init__(self, tm: TruckTaskModel) -> None:
        p = tm.params
        self.sdt, self.k0, self.k1 = p.speed * p.dt, p.speed / p.cab_length * p.dt, \
            p.speed / p.trailer_length * p.dt
        self.max_steer = p.max_steer

    def forward(self, x: np.ndarray, a: np.ndarray, record: bool = True
                ) -> tuple[np.ndarray, tuple]:
        """``x [B, 4], a [B] -> next [B, 4]`` and what the reverse pass needs (cheap: kept
        with or without ``record``)."""
        t0, t1 = x[:, 2], x[:, 3]
        phi = np.minimum(np.maximum(a, -self.max_steer), self.max_steer)
        c0, s0, tp = np.cos(t0), np.sin(t0), np.tan(phi)
        cd = np.cos(t0 - t1)
        nxt = np.stack([x[:, 0] + self.sdt * c0, x[:, 1] + self.sdt * s0,
                        t0 + self.k0 * tp, t1 + self.k1 * np.sin(t0 - t1)], -1)
        inside = (a >= -self.max_steer) & (a <= self.max_steer)
        return nxt, (c0, s0, tp, cd, inside)

    def backward(self, keep: tuple, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient ``g [B, 4]`` on ``next`` -> on ``x [B, 4]`` and on ``a [B]``."""
        c0, s0, tp, cd, inside = keep
        g3k = g[:, 3] * self.k1 * cd
        gx = np.stack([g[:, 0], g[:, 1],
                       g[:, 2] + self.sdt * (g[:, 1] * c0 - g[:, 0] * s0) + g3k,
                       g[:, 3] - g3k], -1)
        return gx, g[:, 2] * self.k0 * (1.0 + tp * tp) * inside


def adjoint_model(dynamics: Callable, tm: TruckTaskModel) -> _Emulator | _Kinematics:
    """The hand-differentiated model behind ``dynamics``: a truck emulator's ``step``
    (a :class:`DeterministicModel`) or ``tm.step`` (the true kinematics)."""
    owner = getattr(dynamics, "__self__", None)
    if isinstance(owner, WorldModel):
        return _Emulator(owner)
    if isinstance(owner, TruckTaskModel) and getattr(dynamics, "__name__", "") == "step":
        return _Kinematics(owner)
    raise ValueError(f"dynamics: the adjoint supports an emulator's step or "
                     f"TruckTaskModel.step, got {dynamics!r}")


# ----------------------------------------------------------------------------- rollout
@dataclass
class _Tape:
    """What the reverse pass of one rollout needs (lists over the T steps)."""

    steps: list
    final: np.ndarray  # x_T [B, 4]
    cost: np.ndarray  # [B]


class TruckAdjoint:
    """Cost and gradient of correction (or steering) plans through the wall-stopped model.

    ``cascade``: the feedback law the plan corrects (``residual_dynamics``), or None for a
    plan of the steering itself. ``low``, ``high``: the steering bounds the planner uses
    (its float32 bounds, as ``GradientMPC`` sees them). Costs: ``tm.cost`` on
    ``x_0..x_{T-1}``, ``tm.terminal_cost`` on ``x_T``.
    """

    def __init__(self, tm: TruckTaskModel, model: _Emulator | _Kinematics,
                 cascade: CascadeController | None, low: float, high: float) -> None:
        if tm.action_dim != 1 or tm.state_dim != 4:
            raise ValueError("tm: the adjoint is of the truck's 4-D state and 1-D steering")
        self.tm, self.model, self.cascade = tm, model, cascade
        self.low, self.high = float(low), float(high)
        p = tm.params
        self.d = p.trailer_length
        self.jk_w, self.jk_lim = tm.jackknife_weight, 0.8 * p.jackknife_angle
        self.angle_w = tm.angle_weight
        if cascade is not None:
            c = cascade
            self.lg, self.ml, self.kh, self.mh = (c.lookahead_gain, c.min_lookahead,
                                                  c.k_heading, float(c.max_hitch))
            self.kpdt, self.sd = c.k_psi / p.dt, p.speed / p.trailer_length
            self.ls, self.max_steer = p.cab_length / p.speed, p.max_steer

    # -- forward ------------------------------------------------------------------------
    def forward(self, x0: np.ndarray, v: np.ndarray, record: bool = True
                ) -> tuple[_Tape, np.ndarray | None]:
        """Roll ``v [B, T]`` out from ``x0 [B, 4]``: the tape (cost ``[B]``) and, without
        ``record``, the states ``[B, T + 1, 4]`` instead of the reverse pass's cache."""
        d = self.d
        x = np.asarray(x0)
        dt = x.dtype
        if dt not in (np.float32, np.float64):
            raise ValueError(f"x0 must be float32 or float64, got {dt}")
        v = np.asarray(v, dtype=dt)
        b, horizon = v.shape
        cost = np.zeros(b, dt)
        steps, states = [], None
        if not record:
            states = np.empty((b, horizon + 1, 4), dt)
        for t in range(horizon):
            if states is not None:
                states[:, t] = x
            c1, s1 = np.cos(x[:, 3]), np.sin(x[:, 3])
            rx = x[:, 0] - d * c1
            psi = _wrap(x[:, 2] - x[:, 3])
            excess = np.maximum(np.abs(psi) - self.jk_lim, 0.0)
            cost += self.jk_w * excess * excess
            if self.cascade is not None:
                a, casc = self._cascade(x, c1, s1, rx, psi, v[:, t])
            else:
                a, casc = v[:, t], None
            nxt, mkeep = self.model.forward(x, a, record)
            # the wall-stop: held where the rear or the hitch is at the wall, else moved by
            # the fraction of the step before the rear crosses x = 0 (1 if it does not)
            moving = (rx > 0) & (x[:, 0] > 0)
            x1 = nxt[:, 0] - d * np.cos(nxt[:, 3])
            crossing = (rx > 0) & (x1 <= 0)
            delta = nxt - x
            if crossing.any():  # rare: the step of a prediction that reaches the wall
                denom = np.where(crossing, rx - x1, 1.0)
                # in (0, 1] where crossing, so stop_at_wall's clamp to [0, 1] is a no-op
                step = np.where(crossing, rx / denom, 1.0) * moving
            else:
                crossing, denom, step = None, None, moving.astype(dt)
            new = x + step[:, None] * delta  # == x where held, as torch.where
            if record:
                steps.append((x, c1, s1, rx, psi, excess, casc, mkeep, nxt, moving, x1,
                              crossing, denom, step, delta))
            x = new
        if states is not None:
            states[:, horizon] = x
        c1, s1 = np.cos(x[:, 3]), np.sin(x[:, 3])
        rx, ry = x[:, 0] - d * c1, x[:, 1] - d * s1
        heading = np.arctan2(s1, c1)
        psi = _wrap(x[:, 2] - x[:, 3])
        excess = np.maximum(np.abs(psi) - self.jk_lim, 0.0)
        cost += rx * rx + ry * ry + self.angle_w * heading * heading + self.jk_w * excess ** 2
        return _Tape(steps, x, cost), states

    def _cascade(self, x: np.ndarray, c1: np.ndarray, s1: np.ndarray, rx: np.ndarray,
                 psi: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Steering ``clamp(cascade(x) + v)`` ``[B]`` (``CascadeController.__call__``)."""
        ry = x[:, 1] - self.d * s1
        la_raw = rx * self.lg
        look = np.maximum(la_raw, self.ml)
        ref = np.arctan2(ry, look)
        pr_raw = self.kh * _wrap(_wrap(x[:, 3]) - ref)
        psi_ref = np.minimum(np.maximum(pr_raw, -self.mh), self.mh)
        rate = -self.kpdt * (psi - psi_ref) + self.sd * np.sin(psi)
        q = self.ls * rate
        phi_raw = np.arctan(q)
        phi = np.minimum(np.maximum(phi_raw, -self.max_steer), self.max_steer)
        u = phi + v
        upper = np.minimum(u, self.high)
        a = np.maximum(upper, self.low)
        return a, (ry, la_raw, look, pr_raw, q, phi_raw, psi, u, upper)

    # -- reverse ----------------------------------------------------------------------
    def backward(self, tape: _Tape) -> np.ndarray:
        """``dJ/dv [B, T]`` of the rollout recorded in ``tape``."""
        d = self.d
        x = tape.final
        c1, s1 = np.cos(x[:, 3]), np.sin(x[:, 3])
        rx, ry = x[:, 0] - d * c1, x[:, 1] - d * s1
        heading = np.arctan2(s1, c1)  # d heading / d theta1 = 1
        g = np.zeros_like(x)
        g[:, 0] = 2 * rx
        g[:, 1] = 2 * ry
        g[:, 3] = 2 * rx * d * s1 - 2 * ry * d * c1 + 2 * self.angle_w * heading
        self._jackknife_grad(x, g)
        horizon = len(tape.steps)
        grad = np.empty((x.shape[0], horizon), x.dtype)
        for t in range(horizon - 1, -1, -1):
            (x, c1, s1, rx, psi, excess, casc, mkeep, nxt, moving, x1, crossing, denom, step,
             delta) = tape.steps[t]
            # the wall-stop, out = where(held, x, x + frac (nxt - x)), frac = x0 / (x0 - x1)
            gx = g * (1.0 - step)[:, None]
            gnxt = g * step[:, None]
            if crossing is not None:
                gfrac = (g * delta).sum(1) * (crossing & moving) / (denom * denom)
                gx0, gx1 = -gfrac * x1, gfrac * rx
                gnxt[:, 0] += gx1
                gnxt[:, 3] += gx1 * d * np.sin(nxt[:, 3])
                gx[:, 0] += gx0
                gx[:, 3] += gx0 * d * s1
            # the model
            gm, ga = self.model.backward(mkeep, gnxt)
            gx += gm
            # the steering: the cascade and the clamp
            grad[:, t] = self._cascade_grad(x, c1, s1, casc, ga, gx) if casc is not None else ga
            # the running cost at x_t
            self._jackknife_grad(x, gx, psi, excess)
            g = gx
        return grad

    def _cascade_grad(self, x: np.ndarray, c1: np.ndarray, s1: np.ndarray, casc: tuple,
                      ga: np.ndarray, gx: np.ndarray) -> np.ndarray:
        """Reverse of :meth:`_cascade`: adds the state's share to ``gx [B, 4]`` in place and
        returns the correction's ``[B]``."""
        ry, la_raw, look, pr_raw, q, phi_raw, psi, u, upper = casc
        # torch's minimum / maximum: the gradient is split in half at a tie (v = 0 on a
        # saturated cascade is one), so each factor is 1, 1/2 or 0
        half = ga.dtype.type(0.5)  # a numpy scalar: keeps float32 float32
        gu = ga * ((half * (u < self.high) + half * (u <= self.high))
                   * (half * (upper > self.low) + half * (upper >= self.low)))
        ms = self.max_steer
        grate = gu * ((phi_raw >= -ms) & (phi_raw <= ms)) * self.ls / (1.0 + q * q)
        gpsi = grate * (self.sd * np.cos(psi) - self.kpdt)
        ge = grate * self.kpdt * self.kh * ((pr_raw >= -self.mh) & (pr_raw <= self.mh))
        # ref = atan2(ry, look), e = wrap(wrap(theta1) - ref)
        r2 = ge / (ry * ry + look * look)
        gry = -r2 * look
        grx = r2 * ry * (la_raw >= self.ml) * self.lg
        d = self.d
        gx[:, 0] += grx
        gx[:, 1] += gry
        gx[:, 2] += gpsi
        gx[:, 3] += grx * d * s1 - gry * d * c1 + ge - gpsi
        return gu

    def _jackknife_grad(self, x: np.ndarray, g: np.ndarray, psi: np.ndarray | None = None,
                        excess: np.ndarray | None = None) -> None:
        """Adds the jackknife penalty's gradient at ``x [B, 4]`` to ``g`` in place."""
        if psi is None:
            psi = _wrap(x[:, 2] - x[:, 3])
            excess = np.maximum(np.abs(psi) - self.jk_lim, 0.0)
        gp = 2.0 * self.jk_w * excess * np.sign(psi)
        g[:, 2] += gp
        g[:, 3] -= gp

    def cost_and_grad(self, x0: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cost ``[B]`` and ``dJ/dv [B, T]`` of plans ``v [B, T]`` from ``x0 [B, 4]``."""
        tape, _ = self.forward(x0, v)
        return tape.cost, self.backward(tape)

    def cost(self, x0: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Cost ``[B]`` only (no cache kept)."""
        return self.forward(x0, v, record=False)[0].cost

    def states(self, x0: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Predicted states ``[B, T + 1, 4]`` (``x_0`` first)."""
        return self.forward(x0, v, record=False)[1]


# ----------------------------------------------------------------------------- planner
class AdjointGradientMPC:
    """``GradientMPC`` (Adam, ``bounds="tanh"``, one candidate) on the truck's wall-stopped,
    pre-stabilised model, its gradient from :class:`TruckAdjoint`.

    The interface ``TruckMPC`` uses: ``plan(state [B, 4], init [B, T, 1]) -> [B, T, 1]``
    (in ``state``'s dtype), settable ``horizon`` and ``iterations``, ``reset()``,
    ``dynamics`` (the torch model it mirrors, for the steering and the arrival), and
    ``arrival(state, plan)``. Each iteration evaluates the plan, keeps it if it is the
    best so far, and takes one Adam step on ``w = atanh(normalised v)``; a last
    evaluation follows, and the best plan seen is returned (as ``GradientMPC`` does).
    """

    def __init__(self, adjoint: TruckAdjoint, dynamics: Callable, horizon: int,
                 iterations: int = 1, lr: float = 0.05, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be positive, got {lr}")
        self.adjoint, self.dynamics = adjoint, dynamics
        self.horizon, self.iterations, self.lr = horizon, iterations, float(lr)
        self.betas, self.eps = betas, float(eps)
        self.last_costs: np.ndarray | None = None  # [iterations + 1, B] of the last call

    def reset(self) -> None:
        """Nothing is kept between calls (``TruckMPC`` passes every warm start)."""

    def gradient(self, state: torch.Tensor, actions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``GradientMPC.gradient``: cost ``J [B]`` and ``dJ/da [B, T, 1]`` of ``actions``."""
        x0 = _np(state)
        cost, grad = self.adjoint.cost_and_grad(x0, _np(actions, x0)[..., 0])
        return (torch.as_tensor(cost, dtype=state.dtype),
                torch.as_tensor(grad[..., None], dtype=state.dtype))

    def plan(self, state: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        """Optimise ``init [B, T, 1]`` (T = ``horizon``) from ``state [B, 4]``."""
        if state.ndim != 2 or state.shape[1] != 4:
            raise ValueError(f"state must have shape [B, 4], got {list(state.shape)}")
        want = (state.shape[0], self.horizon, 1)
        if tuple(init.shape) != want:
            raise ValueError(f"init must have shape {list(want)}, got {list(init.shape)}")
        x0 = _np(state)
        if not np.isfinite(x0).all():
            raise ValueError("state contains NaN or inf")
        low, high = self.adjoint.low, self.adjoint.high
        half = (high - low) / 2
        v0 = np.clip(_np(init, x0)[..., 0], low, high)
        w = np.arctanh(np.clip((v0 - low) / half - 1.0, -_EDGE, _EDGE))
        m, s = np.zeros_like(w), np.zeros_like(w)
        b1, b2 = self.betas
        best, best_cost = v0.copy(), np.full(w.shape[0], np.inf)
        history = []
        for k in range(1, self.iterations + 1):
            th = np.tanh(w)
            v = low + (high - low) * (th + 1.0) / 2
            cost, gv = self.adjoint.cost_and_grad(x0, v)
            _keep_best(cost, v, best, best_cost)
            history.append(cost)
            gw = np.nan_to_num(gv * half * (1.0 - th * th), nan=0.0, posinf=0.0, neginf=0.0)
            # torch.optim.Adam's update, element-wise (the B problems stay independent)
            m = b1 * m + (1 - b1) * gw
            s = b2 * s + (1 - b2) * gw * gw
            denom = np.sqrt(s) / math.sqrt(1 - b2 ** k) + self.eps
            w = w - (self.lr / (1 - b1 ** k)) * m / denom
        v = low + (high - low) * (np.tanh(w) + 1.0) / 2
        cost = self.adjoint.cost(x0, v)
        _keep_best(cost, v, best, best_cost)
        history.append(cost)
        self.last_costs = np.stack(history)
        if not np.isfinite(best_cost).all():
            raise ValueError("AdjointGradientMPC: every candidate plan had a non-finite cost")
        return torch.as_tensor(np.clip(best, low, high)[..., None], dtype=state.dtype)

    def arrival(self, state: torch.Tensor, plan: torch.Tensor, margin: int) -> int:
        """``TruckMPC._arrival``: the first step at which every predicted trailer rear has
        reached the wall under ``plan [B, T, 1]``; ``T + margin`` if some never does."""
        x0 = _np(state)
        xs = self.adjoint.states(x0, _np(plan, x0)[..., 0])  # [B, T + 1, 4]
        rear = xs[..., 0] - self.adjoint.d * np.cos(xs[..., 3])
        arrived = np.flatnonzero((rear[:, :-1] <= 0).all(0))
        return int(arrived[0]) if arrived.size else plan.shape[1] + margin


def _keep_best(cost: np.ndarray, v: np.ndarray, best: np.ndarray, best_cost: np.ndarray
               ) -> None:
    """Where ``cost [B]`` (NaN counts as inf) beats ``best_cost``, keep ``v [B, T]``."""
    cost = np.nan_to_num(cost, nan=np.inf)
    better = cost < best_cost
    if better.any():
        best[better] = v[better]
        best_cost[better] = cost[better]


def _np(t: torch.Tensor, like: np.ndarray | None = None) -> np.ndarray:
    """A tensor as a float32 or float64 array (``like``'s dtype if given)."""
    a = t.detach().cpu().numpy()
    if like is not None:
        return a.astype(like.dtype, copy=False)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)
