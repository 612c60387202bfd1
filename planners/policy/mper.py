"""Model-predictive policy learning with expert regularisation (MPER, PPUU).

The policy drives the frozen model from a recorded context while the latent ``z`` of
every step is inferred from the recorded future (the posterior), so the model replays
what the other cars actually did; the loss is the distance between the predicted and
the recorded future (states in normalised units plus frames), i.e. the policy learns to
act so that the future unfolds as it did under the expert.
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

from worldplan.planners.policy.imitation import BatchSampler, unit_frames
from worldplan.planners.policy.mpur import policy_rollout

log = logging.getLogger(__name__)

# posterior(context, context_frames, target_states, target_frames) -> z [B, T, Z]
PosteriorFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MPERConfig:
    steps: int = 300
    batch_size: int = 16
    horizon: int = 10
    lr: float = 1e-4
    grad_clip: float = 5.0
    image_weight: float = 1.0


def train_mper(policy: nn.Module, model: Any, sample: BatchSampler, posterior: PosteriorFn,
               state_scale: torch.Tensor, config: MPERConfig, rng: np.random.Generator,
               writer: Any = None, tag: str = "mper", progress: bool = True) -> list[float]:
    """Train ``policy``; ``state_scale`` ``[S]`` divides state errors (e.g. the data set's
    delta std). Returns the loss per step."""
    if config.steps < 1 or config.horizon < 1:
        raise ValueError(f"steps and horizon must be >= 1, got {config.steps}, {config.horizon}")
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    losses: list[float] = []
    for step in tqdm(range(config.steps), desc=f"train {tag}", disable=not progress, leave=False):
        b = sample(rng, config.batch_size)
        t = min(config.horizon, b["targets"].shape[1])
        with torch.no_grad():
            z = posterior(b["context"], b["context_images"], b["targets"][:, :t],
                          b["target_images"][:, :t])
        states, images, _ = policy_rollout(policy, model, b["context"], b["context_images"], t, z)
        s_err = (((states - b["targets"][:, :t]) / state_scale) ** 2).mean()
        i_err = ((images - unit_frames(b["target_images"][:, :t])) ** 2).mean()
        loss = s_err + config.image_weight * i_err
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            log.warning("%s: non-finite loss at step %d skipped", tag, step)
            continue
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
        opt.step()
        losses.append(loss.item())
        if writer is not None:
            writer.add_scalar(f"{tag}/loss", loss.item(), step)
    return losses
