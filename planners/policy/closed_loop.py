"""A policy driving a world model in closed loop, through the model-state contract.

``policy(ModelState) -> action [B, A]`` sees the model's whole state (context states and,
for an image model, frames); ``model.advance`` moves it on. The same loop serves every
model kind, so a policy learner differentiates the summed cost of the returned trajectory
with respect to the policy's parameters whatever the model is. A plain dynamics callable
(a task's true ``step``) joins in as a :class:`~worldplan.worldmodels.contract.DynamicsModel`:
backprop through time (bptt.py) is this loop too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from worldplan.worldmodels.contract import Advances, ModelState, Trajectory

Policy = Callable[[ModelState], torch.Tensor]


def policy_unroll(policy: Policy, model: Advances, ms: ModelState, horizon: int,
                  z: torch.Tensor | None = None) -> tuple[Trajectory, torch.Tensor]:
    """The trajectory ``horizon`` steps on from ``ms`` and the policy's actions
    ``[B, T, A]``; ``z`` ``[B, T, Z]`` fixes a cVAE's latents (the prior's draws when None).
    Differentiable end to end."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    states, images, actions = [], [], []
    for t in range(horizon):
        action = policy(ms)
        ms = model.advance(ms, action, None if z is None else z[:, t])
        states.append(ms.state)
        images.append(ms.image)
        actions.append(action)
    imgs = None if ms.frames is None else torch.stack(images, 1)
    return Trajectory(torch.stack(states, 1), imgs, ms), torch.stack(actions, 1)
