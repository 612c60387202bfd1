"""1-step imitation learning of a policy on image + vector contexts (PPUU's setting),
and the batch format the policy learners share.

The policy is any ``nn.Module`` called as ``policy(states [B, ncond, S], frames [B, ncond,
C, H, W]) -> actions [B, A]`` with ``policy.normalised(actions)``, the actions in the
units the loss is measured in (the highway's network is
``worldplan.experiments.highway_policy_net.ContextPolicy``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

# a batch: context states [B, ncond, S], context frames [B, ncond, C, H, W] (uint8 or
# float), expert actions [B, T, A], target states [B, T, S], target frames [B, T, C, H, W]
Batch = dict[str, torch.Tensor]
BatchSampler = Callable[[np.random.Generator, int], Batch]


def unit_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [0, 1]; float frames pass through."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames


@dataclass
class ImitationConfig:
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 1.0


def train_imitation(policy: nn.Module, sample: BatchSampler, config: ImitationConfig,
                    rng: np.random.Generator, writer: Any = None, tag: str = "imitation",
                    progress: bool = True) -> list[float]:
    """1-step imitation: regress the expert's first action of each window (MSE in
    normalised action units). Returns the loss per step."""
    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    losses: list[float] = []
    for step in tqdm(range(config.steps), desc=f"train {tag}", disable=not progress, leave=False):
        batch = sample(rng, config.batch_size)
        pred = policy(batch["context"], batch["context_images"])
        loss = ((policy.normalised(pred) - policy.normalised(batch["actions"][:, 0])) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
        opt.step()
        losses.append(loss.item())
        if writer is not None:
            writer.add_scalar(f"{tag}/loss", loss.item(), step)
    return losses
