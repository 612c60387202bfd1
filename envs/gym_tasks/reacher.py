"""Gymnasium's ``Reacher-v5`` (MuJoCo): the reward as a differentiable cost."""

from __future__ import annotations

import torch

from worldplan.envs.gym_tasks.base import GymTaskModel


class ReacherTaskModel(GymTaskModel):
    """``Reacher-v5``: state ``[cos q1, cos q2, sin q1, sin q2, target xy, q1dot, q2dot,
    fingertip - target xy]`` (10), torques ``[-1, 1]^2``. Reward
    ``-w_d |fingertip - target| - w_c |a|^2``; the distance is smoothed near 0 by ``eps``
    so its gradient exists (the target and fingertip share their height, so the 2-D
    distance in the observation is exact)."""

    env_id = "Reacher-v5"
    state_dim = 10
    action_dim = 2
    dt = 0.02
    env_attrs = {"reward_dist_weight": "_reward_dist_weight",
                 "reward_control_weight": "_reward_control_weight"}
    planning = {"horizon": 20, "hidden": 128}

    def __init__(self, reward_dist_weight: float = 1.0, reward_control_weight: float = 1.0,
                 eps: float = 1e-8) -> None:
        self.w_dist, self.w_ctrl, self.eps = float(reward_dist_weight), \
            float(reward_control_weight), float(eps)
        super().__init__(-torch.ones(2), torch.ones(2))

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return self.w_dist * torch.sqrt((state[:, -2:] ** 2).sum(-1) + self.eps)

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return self.w_ctrl * (action**2).sum(-1)
