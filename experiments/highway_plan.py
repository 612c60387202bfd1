"""The highway's world model whose uncertainty sees the ego's plan: the action-free
ego-motion trunk's scene, cached once per window, plus a residual head ensemble
(:mod:`worldplan.worldmodels.plan_uncertainty`) that takes the trunk's frame seen from the
ego's pose and the ego's offset from the pose the trunk's scene was predicted in.

- The trunk (:class:`~worldmodels.ego_motion.EgoMotionImageModel`) never sees the ego's
  actions, so its predicted scene does not depend on them: it is rolled out once per
  window under the recorded actions (no graph), and a plan only re-warps those frames
  into its own poses (the same exact warp as the oracle's). Only the head runs in the
  BPTT loop.
- The head is trained on recorded windows (offset about zero) and on the counterfactual
  drives (the same car re-driven with perturbed actions among the non-reactive recorded
  traffic): the drive's true frames are the targets, the scene is the trunk's rollout
  from the recorded context under the recorded actions, exactly what a policy's BPTT
  loop sees when it drives off the recording.
- U in PPUU's form (:class:`~worldmodels.plan_uncertainty.ZScoreHinge`): variances per
  step, each z-scored per step against expert rollouts, ``relu(z - 0.5)``, summed. Two
  sources (``u_source``):

  - ``"head"``: three variances over the head ensemble's members (the cars channel's
    mean pixel variance, the same under the proximity mask, the variance of the
    proximity cost). They grow with the ego's offset from its recorded pose wherever
    it drives, so their gradient pulls a policy back to the recorded speeds even on an
    empty road.
  - ``"scene"``: two variances over several trunk scenes (each with its own prior z and
    MC-dropout masks) seen from the ego's pose: the pixel variance under the proximity
    mask and the variance of the proximity cost. They are large only where a car the
    model is unsure of is close to the ego, so the policy pays for driving close to
    cars whose future it cannot predict, not for leaving the recorded path.

Length: the plan-aware world is one piece: the scene it caches, the world that re-warps
it, its two uncertainty sources, the head's training pairs and the hinge's fit share the
window, pose and offset conventions stated above; the generic head and hinge live in
worldmodels/plan_uncertainty.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from worldplan.envs.highway.costs import masks_torch
from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.envs.highway.render import View
from worldplan.worldmodels.contract import ModelState
from worldplan.worldmodels.ego_motion import headings, warp_frames
from worldplan.worldmodels.images import to_unit
from worldplan.worldmodels.plan_uncertainty import PlanHeadEnsemble, ZScoreHinge

OFFSET_DIM = 4  # along, across (m), speed (m/s), heading (rad)
U_SOURCES = ("head", "scene")
N_VARIANCES = {"head": 3, "scene": 2}


def ego_offsets(states: torch.Tensor, ref: torch.Tensor, min_speed: float = 0.2) -> torch.Tensor:
    """Offsets ``[N, 4]`` of ego states ``[N, 4]`` from reference states ``[N, 4]`` (x, y,
    vx, vy): position along and across the reference heading, speed difference and
    heading difference (rad, positive to the left)."""
    h_ref = headings(ref[:, 2:], min_speed)
    h = headings(states[:, 2:], min_speed)
    n_ref = torch.stack([-h_ref[:, 1], h_ref[:, 0]], 1)
    d = states[:, :2] - ref[:, :2]
    along, across = (d * h_ref).sum(1), (d * n_ref).sum(1)
    dspeed = states[:, 2:].norm(dim=1) - ref[:, 2:].norm(dim=1)
    cross = h_ref[:, 0] * h[:, 1] - h_ref[:, 1] * h[:, 0]
    dot = (h_ref * h).sum(1)
    return torch.stack([along, across, dspeed, torch.atan2(cross, dot)], 1)


@torch.no_grad()
def scene_rollout(trunk, context: torch.Tensor, frames: torch.Tensor, actions: torch.Tensor,
                  latent: str = "prior") -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's states ``[B, T, 4]`` and frames ``[B, T, C, H, W]`` under ``actions``
    ``[B, T, 2]`` from the last ``trunk.ncond`` entries of ``context`` ``[B, K, 4]`` and
    ``frames`` ``[B, K, C, H, W]``; ``latent``: "prior" samples z, "zero" sets it to 0."""
    if latent not in ("prior", "zero"):
        raise ValueError(f"latent must be 'prior' or 'zero', got {latent!r}")
    k = trunk.ncond
    b, t = actions.shape[:2]
    z = None
    if trunk.z_dim:
        z = (trunk.sample_prior(b, t) if latent == "prior"
             else torch.zeros(b, t, trunk.z_dim))
    traj = trunk.unroll(trunk.reset(context[:, -k:], to_unit(frames[:, -k:])), actions, z)
    return traj.states, traj.images


@torch.no_grad()
def scene_samples(trunk, context: torch.Tensor, frames: torch.Tensor, actions: torch.Tensor,
                  samples: int, latent: str = "prior") -> torch.Tensor:
    """The cars channel ``[B, samples, T, 1, H, W]`` of ``samples`` trunk scenes under
    ``actions`` ``[B, T, 2]``, each with its own latents and MC-dropout masks (their ego
    states are all the same: the ego's motion is exact kinematics)."""
    if samples < 2:
        raise ValueError(f"samples must be >= 2 (a spread needs two scenes), got {samples}")
    c = trunk.cars_channel
    was = trunk.mc_dropout
    trunk.mc_dropout = True
    try:
        out = [scene_rollout(trunk, context, frames, actions, latent)[1][:, :, c:c + 1]
               for _ in range(samples)]
    finally:
        trunk.mc_dropout = was
    return torch.stack(out, 1)


def scene_oracle(trunk, frames: torch.Tensor, states: torch.Tensor) -> ReplayOracle:
    """The trunk's scene (frames ``[B, T, C, H, W]`` seen from ``states`` ``[B, T, 4]``) as
    a world that re-warps it into any ego pose, with the trunk's geometry."""
    return ReplayOracle(frames, states, trunk.res, trunk.dt, trunk.ego_length,
                        trunk.ego_channel, trunk.cars_channel, trunk.min_speed)


UNCERTAINTY_MODES = ("always", "with-grad", "never")


class PlanHeadWorld:
    """One window's world model for a policy's BPTT loop (``step`` as a world model's):
    the cached scene re-warped into the ego's pose. The head ensemble gives the
    uncertainty: ``variances()`` is ``[B, T, 3]`` for the steps taken so far (see the
    module doc).

    The frame is the trunk's (``residual=False``, the default), not corrected by the
    members' mean residual: the correction is small (the head's cars-channel MSE is 4 %
    below the trunk's alone), and without it VG, SVG and MPUR learn through one and the
    same world, so MPUR differs from SVG by its uncertainty term only.
    ``uncertainty``: "always" runs the head at every step; "with-grad" only at steps
    taken with autograd on (a learner's burn-in runs without a graph and its variances
    are not used: zeros stand in for them), and of those only at every ``every``-th step
    of the scene (zeros between: the head's forward and backward passes are most of an
    update's cost); "never" does not run it (VG, SVG)."""

    z_dim = 0

    def __init__(self, trunk, head: PlanHeadEnsemble | None, scene_states: torch.Tensor,
                 scene_frames: torch.Tensor, view: View, residual: bool = False,
                 uncertainty: str = "always", every: int = 1, source: str = "head",
                 samples: torch.Tensor | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MODES}, "
                             f"got {uncertainty!r}")
        if source not in U_SOURCES:
            raise ValueError(f"source must be one of {U_SOURCES}, got {source!r}")
        if source == "scene" and uncertainty != "never" and (
                samples is None or samples.ndim != 6
                or samples.shape[0] != scene_states.shape[0]
                or samples.shape[2] != scene_states.shape[1]):
            raise ValueError("source 'scene' needs samples [B, K, T, 1, H, W] of the "
                             "scene's batch and steps")
        if head is None and (residual or (source == "head" and uncertainty != "never")):
            raise ValueError("this world needs the head ensemble (residual frames or "
                             "source 'head'); head=None serves source 'scene' only")
        self.trunk, self.head, self.view = trunk, head, view
        self.scene_states = scene_states
        self.oracle = scene_oracle(trunk, scene_frames, scene_states)
        self.c = trunk.cars_channel
        self.residual, self.uncertainty, self.every = residual, uncertainty, every
        self.source, self.samples = source, samples
        self.n_variances = N_VARIANCES[source]
        self._vars: list[torch.Tensor] = []

    def parameters(self):
        return iter(())

    def eval(self) -> PlanHeadWorld:
        return self

    def step(self, context: torch.Tensor, action: torch.Tensor, z: torch.Tensor | None = None,
             image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.oracle.t
        state, base = self.oracle.step(context, action)
        # measure U here (and run the head, unless U comes from the scene samples)
        measure = self.residual or self.uncertainty == "always" or (
            self.uncertainty == "with-grad" and torch.is_grad_enabled()
            and (t + 1) % self.every == 0)
        if not measure:
            if self.uncertainty == "with-grad":
                self._vars.append(state.new_zeros(state.shape[0], self.n_variances))
            return state, base
        if self.source == "scene" and not self.residual:
            self._vars.append(self._scene_variances(t, state))
            return state, base
        c = self.c
        offset = ego_offsets(state, self.scene_states[:, t], self.trunk.min_speed)
        cars = base[:, c:c + 1]
        mean, members, var = self.head.mc(cars, offset)
        frame = base
        if self.residual:
            frame = torch.cat([base[:, :c], (cars + mean).clamp(0.0, 1.0), base[:, c + 1:]], 1)
        if self.uncertainty != "never":
            self._vars.append(self._scene_variances(t, state) if self.source == "scene"
                              else self._variances(cars + members, var, state))
        return state, frame

    def advance(self, ms: ModelState, action: torch.Tensor,
                z: torch.Tensor | None = None) -> ModelState:
        """The model-state contract's step (worldmodels/contract.py): ``ms`` moved on by
        :meth:`step`."""
        return ms.then(*self.step(ms.context, action))

    def _scene_variances(self, t: int, state: torch.Tensor) -> torch.Tensor:
        """``[B, 2]``: over the scene samples seen from ``state`` ``[B, 4]``, the mean pixel
        variance of the cars under the proximity mask and the variance of the proximity
        cost (the max of the mask times the cars)."""
        b, k = self.samples.shape[:2]
        rec = self.scene_states[:, t]
        cars = self.samples[:, :, t].flatten(0, 1).float()  # [B K, 1, H, W]
        ms = self.trunk.min_speed
        # every sample of a row is seen from that row's pose: poses repeated k times
        pos_from, head_from, pos_to, head_to = (
            x.repeat_interleave(k, 0) for x in (rec[:, :2], headings(rec[:, 2:], ms),
                                                state[:, :2], headings(state[:, 2:], ms)))
        warped = warp_frames(cars, pos_from, head_from, pos_to, head_to, self.trunk.res,
                             padding="zeros").view(b, k, *cars.shape[1:])
        mask = masks_torch(state.detach(), self.view)["proximity"]  # [B, H, W]
        near = mask[:, None] * warped[:, :, 0]  # [B, K, H, W]
        local = (mask * warped[:, :, 0].var(1)).flatten(1).sum(1) \
            / mask.flatten(1).sum(1).clamp_min(1.0)
        return torch.stack([local, near.flatten(2).amax(2).var(1)], 1)

    def _variances(self, member_cars: torch.Tensor, var: torch.Tensor, state: torch.Tensor
                   ) -> torch.Tensor:
        """``[B, 3]``: mean pixel variance, the same under the proximity mask, and the
        variance of the proximity cost over the members (frames ``[k, B, 1, H, W]``)."""
        mask = masks_torch(state.detach(), self.view)["proximity"]
        v = var[:, 0]
        pix = v.flatten(1).mean(1)
        local = (mask * v).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
        prox = (mask[None] * member_cars[:, :, 0].clamp(0.0, 1.0)).flatten(2).amax(2)
        return torch.stack([pix, local, prox.var(0)], 1)

    def variances(self) -> torch.Tensor:
        if self.uncertainty == "never":
            raise ValueError("this world was built without uncertainty (uncertainty='never')")
        if not self._vars:
            raise ValueError("no step taken yet")
        return torch.stack(self._vars, 1)


class LastSteps:
    """The hinge of the last ``steps`` steps of variances ``[B, T, K]``, each step z-scored
    against its own step of the scene: after a burn-in of ``T - steps`` steps (no graph)
    the learner's gradient runs through the last ``steps`` only. With variances measured
    at every ``every``-th step only (zeros between, :class:`PlanHeadWorld`), the hinge is
    scaled by ``every`` so that its mean over the steps keeps its size."""

    def __init__(self, hinge: ZScoreHinge, steps: int, every: int = 1) -> None:
        if steps < 1 or every < 1:
            raise ValueError(f"steps and every must be >= 1, got {steps}, {every}")
        self.inner, self.steps, self.every = hinge, steps, every

    def hinge(self, u: torch.Tensor) -> torch.Tensor:
        """``[B, steps]`` from ``u`` ``[B, T >= steps, K]``."""
        h = self.inner.hinge(u)[:, -self.steps:]
        if self.every == 1:
            return h
        # zeros stand for the unmeasured steps: only the measured ones count
        return h * (u[:, -self.steps:] != 0).any(-1) * self.every


def plan_world_fn(trunk, head: PlanHeadEnsemble | None, view: View, latent: str = "prior",
                  uncertainty: str = "always", residual: bool = False, every: int = 1,
                  source: str = "head", samples: int = 4
                  ) -> tuple[Callable[[dict], PlanHeadWorld], Callable]:
    """``(model_fn, uncertainty_fn)`` for :func:`planners.policy.mpur.train_mpur`: the
    model of each batch (its scene rolled out under the batch's recorded actions) and
    the variances ``[B, T, K]`` of the last model built (the learner calls it after the
    rollout through that model); ``uncertainty``, ``residual``, ``every`` and ``source``
    as in :class:`PlanHeadWorld`; ``samples``: the scenes of source "scene"."""
    holder: dict[str, PlanHeadWorld] = {}
    wants_samples = source == "scene" and uncertainty != "never"

    def model_fn(batch: dict[str, torch.Tensor]) -> PlanHeadWorld:
        if "scene_states" in batch:  # cached by scene_pool
            states, frames = batch["scene_states"], batch["scene_frames"].float()
        else:
            states, frames = scene_rollout(trunk, batch["context"], batch["context_images"],
                                           batch["actions"], latent)
        cars = None
        if wants_samples:
            cars = batch.get("scene_samples")
            if cars is None:
                cars = scene_samples(trunk, batch["context"], batch["context_images"],
                                     batch["actions"], samples, latent)
        holder["world"] = PlanHeadWorld(trunk, head, states, frames, view, residual,
                                        uncertainty, every, source, cars)
        return holder["world"]

    def uncertainty_fn(context, frames, actions, z) -> torch.Tensor:
        return holder["world"].variances()

    return model_fn, uncertainty_fn


def scene_pool(trunk, sample, rng: np.random.Generator, windows: int, latent: str = "prior",
               batch: int = 32, samples: int = 0, envelope: int = 0):
    """A sampler over ``windows`` windows drawn once from ``sample`` whose trunk scenes
    (``scene_states`` ``[T, 4]``, ``scene_frames`` ``[T, C, H, W]`` float16 and, with
    ``samples`` >= 2, the cars channel of that many sampled scenes ``scene_samples``
    ``[samples, T, 1, H, W]`` float16) are rolled out once: the scene does not depend on
    the policy, so a learner's update then costs only the policy, the warps and U.
    ``envelope`` >= 2: the scene's cars channel is the pixelwise max of the scene and
    that many sampled scenes (a car is wherever one plausible future puts it)."""
    if envelope == 1 or samples == 1:
        raise ValueError("samples and envelope need 0 or >= 2 scenes")
    c = trunk.cars_channel
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, windows, batch):
        b = sample(rng, min(batch, windows - start))
        states, frames = scene_rollout(trunk, b["context"], b["context_images"], b["actions"],
                                       latent)
        drawn = None
        if samples or envelope:
            drawn = scene_samples(trunk, b["context"], b["context_images"], b["actions"],
                                  max(samples, envelope), latent)
        if envelope:
            frames[:, :, c:c + 1] = torch.maximum(frames[:, :, c:c + 1],
                                                  drawn[:, :envelope].amax(1))
        part = {**b, "scene_states": states, "scene_frames": frames.half()}
        if samples:
            part["scene_samples"] = drawn[:, :samples].half()
        parts.append(part)
    pool = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    n = len(pool["context"])

    def draw(rng_: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(rng_.integers(0, n, size))
        return {k: v[idx] for k, v in pool.items()}

    return draw


# ------------------------------------------------------------------ training the head
def drive_references(meta: dict) -> dict[int, tuple[int, int]]:
    """``{drive episode id: (recorded episode id of the same car, index of the drive's
    first state in that episode)}`` from the data set's generator config."""
    kinds, cars, starts = meta["kinds"], meta["car_ids"], meta["start_steps"]
    recorded = {cars[i]: i for i, k in enumerate(kinds) if k == "recorded"}
    out = {}
    for i, k in enumerate(kinds):
        if k == "drive" and cars[i] in recorded:
            r = recorded[cars[i]]
            out[i] = (r, starts[i] - starts[r])
    return out


@torch.no_grad()
def head_pairs(ds, trunk, episodes: list[int], horizon: int, windows: int,
               rng: np.random.Generator, batch: int = 32) -> dict[str, torch.Tensor]:
    """Training pairs for the head: ``frame`` (the trunk's cars channel seen from the
    true pose) ``[N, 1, H, W]``, ``offset`` ``[N, 4]`` and ``target`` (the true cars
    channel) ``[N, 1, H, W]``, float16 frames. Half of the ``windows`` start in recorded
    episodes, half at the start of counterfactual drives (the scene then comes from the
    recorded context and actions, the targets from the drive)."""
    meta = ds.manifest["generator"]["config"]
    refs = drive_references(meta)
    kinds = meta["kinds"]
    rec_eps = [e for e in episodes if kinds[e] == "recorded"]
    drv_eps = [e for e in episodes if e in refs]
    k = trunk.ncond
    jobs = []  # (recorded episode, index of its last context state, target episode)
    for _ in range(windows):
        if drv_eps and rng.random() < 0.5:
            d = int(rng.choice(drv_eps))
            r, i0 = refs[d]
            n_r = len(ds.episode(r)["actions"])
            if i0 < k - 1 or i0 + horizon > n_r:
                continue
            jobs.append((r, i0, d))
        else:
            r = int(rng.choice(rec_eps))
            n_r = len(ds.episode(r)["actions"])
            if n_r < k + horizon:
                continue
            i0 = int(rng.integers(k - 1, n_r - horizon + 1))
            jobs.append((r, i0, r))
    c = trunk.cars_channel
    out: dict[str, list[torch.Tensor]] = {"frame": [], "offset": [], "target": []}
    for j in range(0, len(jobs), batch):
        part = jobs[j:j + batch]
        eps = [ds.episode(r) for r, *_ in part]
        ctx = torch.from_numpy(np.stack([e["states"][i0 - k + 1:i0 + 1]
                                         for e, (_, i0, _) in zip(eps, part, strict=True)]))
        cfr = torch.from_numpy(np.stack([e["images"][i0 - k + 1:i0 + 1]
                                         for e, (_, i0, _) in zip(eps, part, strict=True)]))
        act = torch.from_numpy(np.stack([e["actions"][i0:i0 + horizon]
                                         for e, (_, i0, _) in zip(eps, part, strict=True)]))
        s0, f0 = scene_rollout(trunk, ctx.float(), cfr, act.float())
        # the true states and frames of each step (the drive's, or the recording's)
        tst = s0.clone()
        timg = torch.zeros_like(f0)
        valid = torch.zeros(len(part), horizon, dtype=torch.bool)
        for b, (r, i0, tgt) in enumerate(part):
            te = ds.episode(tgt)
            first = i0 + 1 if tgt == r else 1  # a drive's state 0 is the recording's i0
            steps = min(horizon, len(te["states"]) - first)
            if steps < 1:
                continue
            tst[b, :steps] = torch.from_numpy(np.array(te["states"][first:first + steps],
                                                         np.float32))
            timg[b, :steps] = to_unit(torch.from_numpy(
                np.array(te["images"][first:first + steps])))
            valid[b, :steps] = True
        oracle = scene_oracle(trunk, f0, s0)
        for t in range(horizon):
            keep = valid[:, t]
            if not keep.any():
                continue
            frame = oracle.frame(t, tst[:, t])
            out["frame"].append(frame[keep, c:c + 1].half())
            out["offset"].append(ego_offsets(tst[keep, t], s0[keep, t], trunk.min_speed))
            out["target"].append(timg[keep, t, c:c + 1].half())
    if not out["frame"]:
        raise ValueError("no head training pair: episodes too short for the horizon")
    return {k_: torch.cat(v) for k_, v in out.items()}


def pair_sampler(pairs: dict[str, torch.Tensor]):
    n = len(pairs["frame"])

    def sample(rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(rng.integers(0, n, size))
        return {k: v[idx].float() for k, v in pairs.items()}

    return sample


# ------------------------------------------------------------------ U along given actions
@torch.no_grad()
def variances_under(trunk, head: PlanHeadEnsemble | None, view: View,
                    batch: dict[str, torch.Tensor], actions: torch.Tensor,
                    latent: str = "prior", source: str = "head", samples: int = 4
                    ) -> torch.Tensor:
    """``[B, T, K]`` variances along ``actions`` ``[B, T, 2]`` (open loop) from the
    batch's context, the scene rolled out under the batch's recorded actions."""
    model_fn, u_fn = plan_world_fn(trunk, head, view, latent, source=source, samples=samples)
    world = model_fn(batch)
    ctx = batch["context"]
    for t in range(actions.shape[1]):
        s, _ = world.step(ctx, actions[:, t])
        ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
    return world.variances()


def unusual_actions(actions: torch.Tensor, rng: np.random.Generator, accel: float = 1.5,
                    steer: float = 0.004, ego_length: float = 4.8) -> torch.Tensor:
    """The recorded actions ``[B, T, 2]`` plus a constant random push per window of
    ``+-accel`` m/s^2 and ``+-steer`` 1/m (random signs), within the kinematic limits."""

    b = actions.shape[0]
    sign = torch.from_numpy(rng.choice([-1.0, 1.0], size=(b, 1, 2)).astype(np.float32))
    push = sign * torch.tensor([accel, steer])
    out = actions + push
    out[..., 0] = out[..., 0].clamp(-MAX_ACCEL, MAX_ACCEL)
    out[..., 1] = out[..., 1].clamp(-1.0 / ego_length, 1.0 / ego_length)
    return out


def fit_hinge(trunk, head: PlanHeadEnsemble | None, view: View, sample, rng: np.random.Generator,
              batches: int = 8, batch_size: int = 16, source: str = "head",
              samples: int = 4) -> ZScoreHinge:
    """PPUU's per-step z-scores from ``batches x batch_size`` expert windows (the
    variances along the recorded actions)."""
    rows = []
    for _ in range(batches):
        b = sample(rng, batch_size)
        rows.append(variances_under(trunk, head, view, b, b["actions"], source=source,
                                    samples=samples))
    return ZScoreHinge.fit(torch.cat(rows, 0))


__all__ = ["N_VARIANCES", "OFFSET_DIM", "U_SOURCES", "LastSteps", "PlanHeadWorld",
           "drive_references", "ego_offsets", "fit_hinge", "head_pairs", "pair_sampler",
           "plan_world_fn", "scene_oracle", "scene_pool", "scene_rollout", "scene_samples",
           "unusual_actions", "variances_under"]
