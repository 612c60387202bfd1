"""Gradient MPC through the highway's ego-motion world model, with the scene cached.

The plan ``[B, T, 2]`` (bounded by ``tanh``) is optimised by Adam on the summed image cost
of the predicted frames plus ``u_weight`` x the MC-dropout uncertainty (the cars
channel's pixel variance under the proximity mask, as ``worldplan.experiments.highway``'s
``local_uncertainty``).

Why the cache: in :class:`~worldmodels.ego_motion.EgoMotionImageModel` the network never
sees the ego's actions; they enter only through the kinematic update and the warp into
the ego's pose. So the other cars' predicted motion (block-matching flow, network
features, residual: everything but the pose) does not change between the inner
iterations of one plan. With ``cache=True`` the model (and its MC-dropout samples) is
rolled out once per call under the warm-start plan, and every inner iteration only
re-warps those predicted frames (and their variance) from the poses they were predicted
in into the poses of the current plan (:class:`worldplan.envs.highway.oracle.ReplayOracle`, the same
warp as the oracle's). Exact for the warm-start plan; for other plans it differs from a
full rollout only through the model's alignment of its context (measured in
``benchmarks/bench_highway.py``). ``cache=False`` re-runs the model and its MC samples
in every iteration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.worldmodels.uncertainty import mc_uncertainty

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SceneCacheMPC:
    """Receding-horizon gradient MPC (see the module doc).

    ``act(states [B, K, 4], frames [B, K, C, H, W] in [0, 1]) -> actions [B, 2]``; the
    model sees the last ``model.ncond`` context entries. ``low``/``high`` ``[2]`` bound the
    actions; the plan is kept, shifted by one step, as the next call's warm start
    (:attr:`plan`), and the plan the last call chose is :attr:`chosen` ``[B, T, 2]``.
    :meth:`plan_cost` prices any plan under a full model rollout.
    """

    def __init__(self, model, cost_fn: CostFn, uncertainty_map: Callable | None,
                 low: torch.Tensor, high: torch.Tensor, horizon: int = 5,
                 iterations: int = 5, lr: float = 0.1, u_weight: float = 0.1,
                 mc_samples: int = 2, cache: bool = True) -> None:
        if horizon < 1 or iterations < 1 or mc_samples < 2:
            raise ValueError(f"horizon and iterations must be >= 1 and mc_samples >= 2, got "
                             f"{horizon}, {iterations}, {mc_samples}")
        self.model, self.cost_fn, self.u_map = model, cost_fn, uncertainty_map
        self.low, self.high = torch.as_tensor(low).float(), torch.as_tensor(high).float()
        self.horizon, self.iterations, self.lr = horizon, iterations, lr
        self.u_weight, self.mc_samples, self.cache = u_weight, mc_samples, cache
        self.plan: torch.Tensor | None = None
        self.chosen: torch.Tensor | None = None

    def reset(self) -> None:
        self.plan = self.chosen = None

    def _actions(self, free: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * (torch.tanh(free) + 1) / 2

    def _free(self, actions: torch.Tensor) -> torch.Tensor:
        unit = (2 * (actions - self.low) / (self.high - self.low) - 1).clamp(-0.9999, 0.9999)
        return torch.atanh(unit)

    def rollout(self, ctx: torch.Tensor, fr: torch.Tensor, actions: torch.Tensor,
                n: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A full model rollout (z = 0) from the context ``ctx`` ``[B, ncond, 4]`` and
        ``fr`` ``[B, ncond, C, H, W]`` under ``actions`` ``[B, T, 2]``: states
        ``[B, T, 4]``, mean frames ``[B, T, C, H, W]`` and the frames' MC-dropout variance
        over ``n`` samples (None when ``n`` is 0), with gradients."""

        z = torch.zeros(len(ctx), actions.shape[1], self.model.z_dim)
        start = self.model.reset(ctx, fr)
        traj = self.model.unroll(start, actions, z)
        states, frames = traj.states, traj.images
        var = None
        if n:
            var = mc_uncertainty(self.model, start, actions, n=n, z=z).image_var
        return states, frames, var

    def cost(self, states: torch.Tensor, frames: torch.Tensor, var: torch.Tensor | None
             ) -> torch.Tensor:
        """Summed cost ``[B]`` of a predicted trajectory (+ ``u_weight`` x U)."""
        b, t = states.shape[:2]
        c = self.cost_fn(frames.flatten(0, 1), states.flatten(0, 1)).view(b, t).sum(1)
        if var is not None and self.u_map is not None and self.u_weight > 0:
            c = c + self.u_weight * self.u_map(var, states).sum(1)
        return c

    def plan_cost(self, states: torch.Tensor, frames: torch.Tensor, plan: torch.Tensor
                  ) -> torch.Tensor:
        """The summed cost ``[B]`` of ``plan`` ``[B, T, 2]`` under a full model rollout (no
        cache, no uncertainty term) from the context ``states`` ``[B, K, 4]`` and
        ``frames`` ``[B, K, C, H, W]`` (the last ``model.ncond`` entries), no gradients."""
        k = self.model.ncond
        with torch.no_grad():
            st, fp, _ = self.rollout(states[:, -k:].float(), frames[:, -k:].float(), plan)
            return self.cost(st, fp, None)

    def act(self, states: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        k = self.model.ncond
        ctx, fr = states[:, -k:].float(), frames[:, -k:].float()
        b = len(ctx)
        plan = self.plan
        if plan is None or plan.shape[0] != b:
            plan = ((self.low + self.high) / 2).expand(b, self.horizon, 2).clone()
        n = self.mc_samples if (self.u_map is not None and self.u_weight > 0) else 0
        free = self._free(plan).requires_grad_(True)
        opt = torch.optim.Adam([free], lr=self.lr)
        scene = None
        if self.cache:
            with torch.no_grad():
                s0, f0, v0 = self.rollout(ctx, fr, plan, n)
            scene = (s0, f0, v0)
        for _ in range(self.iterations):
            actions = self._actions(free)
            if scene is None:
                st, fp, var = self.rollout(ctx, fr, actions, n)
            else:
                st, fp, var = self._replay(scene, ctx, actions)
            loss = self.cost(st, fp, var).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = self._actions(free)
        self.chosen = final
        self.plan = torch.cat([final[:, 1:], final[:, -1:]], 1)
        return final[:, 0]

    def _replay(self, scene, ctx: torch.Tensor, actions: torch.Tensor):
        """The cached scene seen from the poses of ``actions`` (see the module doc)."""
        s0, f0, v0 = scene
        model = self.model
        kw = {"res": model.res, "dt": model.dt, "ego_length": model.ego_length,
              "ego_channel": model.ego_channel, "cars_channel": model.cars_channel,
              "min_speed": model.min_speed}
        frames_or = ReplayOracle(f0, s0, **kw)
        var_or = ReplayOracle(v0, s0, **kw) if v0 is not None else None
        states, frames, vars_ = [], [], []
        last = ctx[:, -1:]
        for t in range(actions.shape[1]):
            s, f = frames_or.step(last, actions[:, t])
            states.append(s)
            frames.append(f)
            if var_or is not None:
                vars_.append(var_or.frame(t, s))
            last = s[:, None]
        var = torch.stack(vars_, 1) if vars_ else None
        return torch.stack(states, 1), torch.stack(frames, 1), var
