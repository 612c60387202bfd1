"""Model-predictive policy learning with uncertainty regularisation (MPUR, PPUU) and its
ablations VG / SVG, by backprop through time through a frozen world model.

The policy is rolled out in closed loop through the model (the model-state contract's
``model.advance(ms, action, z)``, worldmodels/contract.py); the per-step task cost of
the predicted frames (``cost_fn(images [B, C, H, W], states [B, S]) -> [B]``) is summed;
MPUR adds ``lam`` times the epistemic uncertainty of the model along the policy's
actions (``uncertainty_fn(context, frames, actions, z) -> [B, T]``, e.g. MC-dropout
variance), in PPUU's hinge form: ``relu((U_t - mean_t) / std_t)`` with ``mean_t`` and
``std_t`` measured under the expert's actions on training data, so only uncertainty
beyond what the expert's own actions cause is penalised.

- VG: deterministic model, ``lam = 0``; SVG: stochastic model with z from the prior,
  ``lam = 0``; MPUR: stochastic model, z from the prior, ``lam > 0``.

Nothing here is specific to driving or to one world model class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from worldplan.planners.policy.closed_loop import policy_unroll
from worldplan.planners.policy.imitation import BatchSampler, unit_frames
from worldplan.worldmodels.contract import ModelState

log = logging.getLogger(__name__)

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
UncertaintyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                         torch.Tensor]
LatentFn = Callable[[int, int], torch.Tensor | None]


def policy_rollout(policy: nn.Module, model: Any, context: torch.Tensor, frames: torch.Tensor,
                   horizon: int, z: torch.Tensor | None = None, detach_frames: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed loop through the model (:func:`~planners.policy.closed_loop.policy_unroll`,
    any model with the model-state contract's ``advance``): states ``[B, T, S]``, frames
    ``[B, T, C, H, W]`` and actions ``[B, T, A]`` from context states ``[B, ncond, S]``
    and frames ``[B, ncond, C, H, W]``; ``z`` ``[B, T, Z]`` or None. The policy is called
    as ``policy(context, frames)``. ``detach_frames``: the policy's image input carries no
    gradient back to earlier actions (the cost and the state inputs still do); the
    backward pass then skips the input gradient of the policy's convolutions, its most
    expensive part on a CPU."""

    def drive(ms: ModelState) -> torch.Tensor:
        return policy(ms.context, ms.frames.detach() if detach_frames else ms.frames)

    traj, actions = policy_unroll(drive, model, ModelState(context, unit_frames(frames)),
                                  horizon, z)
    return traj.states, traj.images, actions


@torch.no_grad()
def burn_in(policy: nn.Module, model: Any, context: torch.Tensor, frames: torch.Tensor,
            steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The context ``[B, ncond, S]`` and frames ``[B, ncond, C, H, W]`` (floats in
    [0, 1]) after the policy has driven ``steps`` steps through the model (no graph);
    ``steps = 0`` returns the given context (frames as floats)."""
    fr = unit_frames(frames)
    if steps == 0:
        return context, fr
    states, images, _ = policy_rollout(policy, model, context, fr, steps)
    n = context.shape[1]
    return (torch.cat([context, states], 1)[:, -n:],
            torch.cat([fr, images], 1)[:, -n:])


@dataclass
class UncertaintyStats:
    """Per-step mean and std ``[T]`` of U under the expert's actions."""

    mean: torch.Tensor
    std: torch.Tensor

    def hinge(self, u: torch.Tensor) -> torch.Tensor:
        """``relu((U - mean_t) / std_t)`` for ``u`` ``[B, T]``."""
        t = u.shape[1]
        return torch.relu((u - self.mean[:t]) / self.std[:t])

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


@torch.no_grad()
def expert_uncertainty_stats(uncertainty_fn: UncertaintyFn, sample: BatchSampler,
                             latent: LatentFn, rng: np.random.Generator, batches: int = 4,
                             batch_size: int = 32) -> UncertaintyStats:
    """Mean and std of U per rollout step under the recorded (expert) actions."""
    rows = []
    for _ in range(batches):
        b = sample(rng, batch_size)
        acts = b["actions"]
        rows.append(uncertainty_fn(b["context"], b["context_images"], acts,
                                   latent(acts.shape[0], acts.shape[1])))
    u = torch.cat(rows, 0)
    return UncertaintyStats(u.mean(0), u.std(0).clamp_min(1e-8))


@dataclass
class MPURConfig:
    steps: int = 300
    batch_size: int = 16
    horizon: int = 10
    lr: float = 1e-4
    grad_clip: float = 5.0
    lam: float = 0.5  # weight of the uncertainty hinge (0 = VG / SVG)
    action_weight: float = 0.0  # optional penalty on normalised action magnitude
    detach_frames: bool = False  # see policy_rollout
    # before the ``horizon`` steps that carry the gradient, the policy first drives a
    # random 0..burn_in steps through the model without a graph, so that it also learns
    # from the states its own driving leads to (not only from the recorded ones, where it
    # never starts in the evaluation after its first seconds). The sampled windows must
    # then hold burn_in + horizon future steps.
    burn_in: int = 0


def train_mpur(policy: nn.Module, model: Any, sample: BatchSampler, cost_fn: CostFn,
               config: MPURConfig, rng: np.random.Generator, latent: LatentFn,
               uncertainty_fn: UncertaintyFn | None = None,
               u_stats: UncertaintyStats | None = None, writer: Any = None,
               tag: str = "mpur", progress: bool = True,
               model_fn: Callable[[dict[str, torch.Tensor]], Any] | None = None
               ) -> dict[str, list[float]]:
    """Train ``policy`` through the frozen ``model``; returns per-step ``loss``, ``cost``
    and ``uncertainty`` (the hinge) histories. ``model_fn(batch)``, if given, builds the
    model for each batch instead (e.g. ``worldplan.envs.highway.oracle.ReplayOracle`` from the
    batch's recorded future; ``model`` may then be None)."""
    if config.steps < 1 or config.horizon < 1 or config.burn_in < 0:
        raise ValueError(f"steps and horizon must be >= 1 and burn_in >= 0, got "
                         f"{config.steps}, {config.horizon}, {config.burn_in}")
    if config.lam > 0 and (uncertainty_fn is None or u_stats is None):
        raise ValueError("lam > 0 needs an uncertainty_fn and expert u_stats")
    if model is None and model_fn is None:
        raise ValueError("train_mpur needs a model or a model_fn")
    if model is not None:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    hist: dict[str, list[float]] = {"loss": [], "cost": [], "uncertainty": []}
    bar = tqdm(range(config.steps), desc=f"train {tag}", disable=not progress, leave=False)
    for step in bar:
        b = sample(rng, config.batch_size)
        z = latent(config.batch_size, config.horizon)
        step_model = model if model_fn is None else model_fn(b)
        context, cframes = b["context"], b["context_images"]
        if config.burn_in:
            context, cframes = burn_in(policy, step_model, context, cframes,
                                       int(rng.integers(0, config.burn_in + 1)))
        states, images, actions = policy_rollout(policy, step_model, context, cframes,
                                                 config.horizon, z, config.detach_frames)
        bsz, t = states.shape[:2]
        cost = cost_fn(images.flatten(0, 1), states.flatten(0, 1)).view(bsz, t).mean()
        loss = cost
        u_term = torch.zeros(())
        if config.lam > 0:
            u = uncertainty_fn(context, cframes, actions, z)
            u_term = u_stats.hinge(u).mean()
            loss = loss + config.lam * u_term
        if config.action_weight > 0 and hasattr(policy, "normalised"):
            loss = loss + config.action_weight * (policy.normalised(actions) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            log.warning("%s: non-finite loss at step %d skipped", tag, step)
            continue
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
        opt.step()
        hist["loss"].append(loss.item())
        hist["cost"].append(cost.item())
        hist["uncertainty"].append(u_term.item())
        bar.set_postfix(cost=f"{cost.item():.3f}", u=f"{u_term.item():.3f}")
        if writer is not None:
            writer.add_scalar(f"{tag}/loss", loss.item(), step)
            writer.add_scalar(f"{tag}/cost", cost.item(), step)
            writer.add_scalar(f"{tag}/uncertainty_hinge", u_term.item(), step)
    return hist
