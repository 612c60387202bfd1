"""Gymnasium's ``InvertedPendulum-v5`` (MuJoCo): a surrogate cost and the termination."""

from __future__ import annotations

import torch

from worldplan.envs.gym_tasks.base import GymTaskModel


class InvertedPendulumTaskModel(GymTaskModel):
    """``InvertedPendulum-v5``: state ``[x, th, xdot, thdot]`` (m, rad), force ``[-3, 3]``.

    Reward 1 per step while ``|th| <= 0.2``; the episode terminates otherwise. The
    differentiable surrogate cost is ``(th / 0.2)^2 + 0.5 x^2 + 0.01 xdot^2 + 0.001 thdot^2``
    (0 upright and still, 1 at the termination boundary; the cart terms keep it off the
    rail ends at ``x = +-1``, where the pole is lost), no action cost.
    """

    env_id = "InvertedPendulum-v5"
    state_dim = 4
    action_dim = 1
    dt = 0.04
    # Kept small so that planning with the learned ensemble stays within 50 ms per control
    # step on one core. CEM samples white noise (beta 0): balancing needs step-to-step
    # corrections, which iCEM's low-frequency coloured noise (beta 2) hardly ever proposes.
    # The terminal cost is the learned model's LQR cost-to-go: a 0.6-s horizon cannot see
    # the cart drifting into a rail end (bringing it back needs the pole tipped the other
    # way first).
    planning = {"horizon": 15, "hidden": 64, "cem_samples": 100, "cem_iterations": 3,
                "mppi_samples": 200, "cem_return": "mean", "uncertainty_weight": 10.0,
                "beta": 0.0, "terminal": "lqr"}

    def __init__(self, max_angle: float = 0.2) -> None:
        self.max_angle = float(max_angle)
        super().__init__(torch.tensor([-3.0]), torch.tensor([3.0]))

    def state_cost(self, state: torch.Tensor) -> torch.Tensor:
        return (state[:, 1] / self.max_angle) ** 2 + 0.5 * state[:, 0] ** 2 + \
            0.01 * state[:, 2] ** 2 + 0.001 * state[:, 3] ** 2

    def action_cost(self, action: torch.Tensor) -> torch.Tensor:
        return torch.zeros(action.shape[0], dtype=action.dtype, device=action.device)

    def terminated(self, state: torch.Tensor) -> torch.Tensor:
        return ~torch.isfinite(state).all(-1) | (state[:, 1].abs() > self.max_angle)

    def quadratic_cost(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q [S, S], goal [S])`` with ``state_cost(s) = (s - goal)^T Q (s - goal)``: the
        cost is exactly quadratic, so an LQR cost-to-go can extend it past the horizon."""
        q = torch.diag(torch.tensor([0.5, 1.0 / self.max_angle**2, 0.01, 0.001]))
        return q, torch.zeros(self.state_dim)

    def reward(self, state: torch.Tensor, action: torch.Tensor,
               next_state: torch.Tensor) -> torch.Tensor:
        """Exact: 1 while alive, 0 on the terminating step."""
        return (~self.terminated(next_state)).to(next_state.dtype)
