"""The oracle world model of the highway: the true replayed future, warped into the
ego's predicted pose.

In the evaluation the other cars replay their recordings and do not react to the ego,
so what the ego would see at step t under any actions is the recorded frame of step t
re-projected from the recorded pose into the ego's pose: exact up to what lies outside
the recorded view. Policy learning through this model (backprop through the warp and the
kinematic update) tests the objective and the learner with a perfect model; any gap to
the privileged drivers then lies in the cost, the horizon, the policy's inputs or the
optimiser, not in the world model.
"""

from __future__ import annotations

import torch

from worldplan.envs.highway.kinematics import step_state_torch
from worldplan.worldmodels.contract import ModelState
from worldplan.worldmodels.ego_motion import headings, warp_frames
from worldplan.worldmodels.images import to_unit


class ReplayOracle:
    """One batch's recorded future as a world model: ``step`` number t returns the
    kinematic next state and the recorded frame t warped into it.

    target_images ``[B, T, C, H, W]`` (uint8 or [0, 1]) and target_states ``[B, T, 4]``
    are the recorded frames and the poses they were seen from (a data set window's
    ``target_images`` / ``targets``). Channel ``ego_channel`` (the ego, always at the
    centre) is kept; channel ``cars_channel`` is padded with zeros outside the recorded
    view, the others (lanes, off-road) with the border.
    """

    z_dim = 0

    def __init__(self, target_images: torch.Tensor, target_states: torch.Tensor, res: float,
                 dt: float = 0.1, ego_length: float = 4.8, ego_channel: int = 2,
                 cars_channel: int = 1, min_speed: float = 0.2) -> None:
        if target_images.ndim != 5 or target_states.ndim != 3 or \
                target_images.shape[:2] != target_states.shape[:2]:
            raise ValueError(f"target_images [B, T, C, H, W] and target_states [B, T, 4] must "
                             f"agree, got {list(target_images.shape)} and "
                             f"{list(target_states.shape)}")
        self.images, self.states = target_images, target_states
        self.res, self.dt, self.ego_length = res, dt, ego_length
        self.ego_channel, self.cars_channel, self.min_speed = ego_channel, cars_channel, min_speed
        self.t = 0

    @property
    def horizon(self) -> int:
        return self.states.shape[1]

    def parameters(self):
        return iter(())

    def eval(self) -> ReplayOracle:
        return self

    def step(self, context: torch.Tensor, action: torch.Tensor, z: torch.Tensor | None = None,
             image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next state ``[B, 4]`` and frame ``[B, C, H, W]`` from context states
        ``[B, K, 4]`` and actions ``[B, 2]`` (``z`` and ``image`` are not needed)."""
        if self.t >= self.horizon:
            raise ValueError(f"the oracle holds {self.horizon} recorded steps; step "
                             f"{self.t + 1} asked")
        t, self.t = self.t, self.t + 1
        state = step_state_torch(context[:, -1], action, self.ego_length, self.dt)
        return state, self.frame(t, state)

    def advance(self, ms: ModelState, action: torch.Tensor,
                z: torch.Tensor | None = None) -> ModelState:
        """The model-state contract's step (worldmodels/contract.py): ``ms`` moved on by
        :meth:`step`."""
        return ms.then(*self.step(ms.context, action))

    def frame(self, t: int, state: torch.Tensor) -> torch.Tensor:
        """Recorded frame ``t`` seen from ``state`` ``[B, 4]``."""
        rec = self.states[:, t]
        img = to_unit(self.images[:, t])
        h_from = headings(rec[:, 2:], self.min_speed)
        h_to = headings(state[:, 2:], self.min_speed)
        out = warp_frames(img, rec[:, :2], h_from, state[:, :2], h_to, self.res)
        c = self.cars_channel
        cars = warp_frames(img[:, c:c + 1], rec[:, :2], h_from, state[:, :2], h_to, self.res,
                           padding="zeros")
        out = torch.cat([out[:, :c], cars, out[:, c + 1:]], 1)
        keep = torch.zeros(img.shape[1], dtype=torch.bool, device=img.device)
        keep[self.ego_channel] = True
        return torch.where(keep[None, :, None, None], img, out)
