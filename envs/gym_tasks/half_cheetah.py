"""Gymnasium's ``HalfCheetah-v5`` (MuJoCo): the reward as a differentiable cost."""

from __future__ import annotations

import torch

from worldplan.envs.gym_tasks.base import GymTaskModel


class HalfCheetahTaskModel(GymTaskModel):
    """``HalfCheetah-v5``: state ``qpos[1:] (8), qvel (9)`` = 17, torques ``[-1, 1]^6``.
    Reward ``w_f x_velocity - w_c |a|^2``; gymnasium's ``x_velocity`` is the finite
    difference of the root position over the step, approximated here by the mean of the
    observed root velocity ``qvel[0]`` (index 8) before and after the step (correlation
    0.95 on random actions; 0.92 for the velocity after the step alone). Accordingly
    ``terminal_cost`` is half the state cost, so the planned objective is minus the
    predicted reward up to a constant."""

    env_id = "HalfCheetah-v5"
    state_dim = 17
    action_dim = 6
    dt = 0.05
    env_attrs = {"forward_reward_weight": "_forward_reward_weight",
                 "ctrl_cost_weight": "_ctrl_cost_weight"}
    planning = {"horizon": 20, "hidden": 200, "cem_samples": 400, "cem_iterations": 5}

    def __init__(self, forward_reward_weight: float = 1.0, ctrl_cost_weight: float = 0.1) -> None:
        self.w_fwd, self.w_ctrl = float(forward_reward_weight), float(ctrl_cost_weight)
        super().__init__(-torch.ones(6), torch.ones(6))

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return -self.w_fwd * state[:, 8]

    def terminal_cost(self, state: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.state_cost(state)

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """``w_f (v + v') / 2 - w_c |a|^2`` with ``v`` the root velocity (index 8)."""
        return -0.5 * (self.state_cost(state) + self.state_cost(next_state)) - \
            self.action_cost(action)

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return self.w_ctrl * (action**2).sum(-1)
