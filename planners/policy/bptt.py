"""Policies learned by backpropagation through time through a dynamics model.

The dynamics can be a task's true ``step`` or a frozen learned world model: the policy
is rolled out through it for a horizon, the summed cost is differentiated with respect
to the policy's parameters, and Adam takes a step. A curriculum of lessons (as in
Nguyen & Widrow's truck backer-upper) widens the starting region as training goes. The
rollout is :func:`~worldplan.planners.policy.closed_loop.policy_unroll`, the closed loop of
every policy learner, through the dynamics as a
:class:`~worldplan.worldmodels.contract.DynamicsModel`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from worldplan.planners.policy.closed_loop import policy_unroll
from worldplan.worldmodels.contract import DynamicsModel

log = logging.getLogger(__name__)

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Cost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TerminalCost = Callable[[torch.Tensor], torch.Tensor]


class MLPPolicy(nn.Module):
    """Deterministic policy ``[B, S] -> [B, A]`` squashed into the action bounds by tanh.

    ``features`` maps raw states to network inputs (``[B, S] -> [B, F]``) so that a task
    can offer scale-free inputs; it is not saved in checkpoints and must be given again
    when the policy is rebuilt.
    """

    def __init__(self, in_dim: int, action_dim: int, action_low: torch.Tensor,
                 action_high: torch.Tensor, hidden: Sequence[int] = (64, 64),
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        if low.shape != (action_dim,) or high.shape != (action_dim,):
            raise ValueError(f"action bounds must have shape [{action_dim}], got "
                             f"{list(low.shape)} and {list(high.shape)}")
        if not (low < high).all():
            raise ValueError("action_low must be below action_high in every dimension")
        self.features = features
        self.config = {"in_dim": in_dim, "action_dim": action_dim, "hidden": list(hidden)}
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, action_dim))
        self.net = nn.Sequential(*layers)
        self.register_buffer("centre", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        x = self.features(state) if self.features is not None else state
        return self.centre + self.half_range * torch.tanh(self.net(x))


def rollout(policy: Callable[[torch.Tensor], torch.Tensor], dynamics: Dynamics,
            start: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-loop rollout from ``start`` ``[B, S]``: states ``[B, T+1, S]`` (``start``
    first) and actions ``[B, T, A]``. The loop is :func:`policy_unroll`'s, through the
    dynamics presented as a model of the contract."""
    model = DynamicsModel(dynamics)
    traj, actions = policy_unroll(lambda ms: policy(ms.state), model, model.reset(start), horizon)
    return torch.cat([start[:, None], traj.states], 1), actions


def trajectory_cost(states: torch.Tensor, actions: torch.Tensor, cost: Cost | None,
                    terminal_cost: TerminalCost | None) -> torch.Tensor:
    """Summed running cost plus terminal cost, ``[B]``."""
    total = states.new_zeros(states.shape[0])
    if cost is not None:
        b, t = actions.shape[:2]
        running = cost(states[:, :-1].reshape(b * t, -1), actions.reshape(b * t, -1))
        total = total + running.reshape(b, t).sum(1)
    if terminal_cost is not None:
        total = total + terminal_cost(states[:, -1])
    return total


@dataclass
class Lesson:
    """A stage of the curriculum: where starts are drawn, how long to roll out, and for
    how many updates. ``sample(rng, n) -> [n, S]`` float tensor."""

    sample: Callable[[np.random.Generator, int], torch.Tensor]
    horizon: int
    iterations: int
    name: str = ""


@dataclass
class BPTTConfig:
    batch_size: int = 128
    lr: float = 3e-3
    lr_final_fraction: float = 0.1  # cosine decay to this fraction over all lessons
    grad_clip: float = 1.0
    cost_scale: float = 1.0  # loss = log1p(cost / cost_scale) when log_loss
    log_loss: bool = True


def train_bptt(policy: nn.Module, dynamics: Dynamics, lessons: Sequence[Lesson],
               config: BPTTConfig, rng: np.random.Generator, cost: Cost | None = None,
               terminal_cost: TerminalCost | None = None, writer=None, tag: str = "policy",
               progress: bool = True) -> dict[str, list[float]]:
    """Train ``policy`` through ``dynamics`` lesson by lesson; returns the loss history.

    The loss is the mean over the batch of ``log1p(cost / cost_scale)`` (or the cost
    itself): the log keeps the far-from-dock starts of a wide lesson from drowning the
    gradient of nearly docked ones. Gradients are clipped; a non-finite loss skips the
    update and is counted.
    """
    if not lessons:
        raise ValueError("train_bptt needs at least one lesson")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr)
    total = sum(lesson.iterations for lesson in lessons)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=max(total, 1), eta_min=config.lr * config.lr_final_fraction)
    history: dict[str, list[float]] = {"loss": [], "cost": [], "lesson": []}
    skipped = 0
    bar = tqdm(total=total, desc=f"train {tag}", disable=not progress, leave=False)
    step = 0
    for index, lesson in enumerate(lessons):
        for _ in range(lesson.iterations):
            start = lesson.sample(rng, config.batch_size)
            states, actions = rollout(policy, dynamics, start, lesson.horizon)
            costs = trajectory_cost(states, actions, cost, terminal_cost)
            loss = (torch.log1p(costs / config.cost_scale) if config.log_loss else costs).mean()
            optimiser.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
                if skipped > 20:
                    raise FloatingPointError(f"{tag}: more than 20 non-finite losses; lower the lr")
                continue
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimiser.step()
            schedule.step()
            step += 1
            history["loss"].append(float(loss.detach()))
            history["cost"].append(float(costs.detach().mean()))
            history["lesson"].append(index)
            if writer is not None:
                writer.add_scalar(f"{tag}/loss", float(loss.detach()), step)
                writer.add_scalar(f"{tag}/mean_cost", float(costs.detach().mean()), step)
            bar.update(1)
            bar.set_postfix(lesson=index, cost=f"{float(costs.detach().mean()):.2f}")
    bar.close()
    if skipped:
        log.warning("%s: skipped %d non-finite updates", tag, skipped)
    return history
