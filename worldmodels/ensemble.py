"""An ensemble of K deterministic models (as in PETS): a second uncertainty estimate,
independent of MC-dropout, from the disagreement between members trained from
different initialisations on bootstrap-weighted batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from worldmodels.base import WorldModel
from worldmodels.dataset import NormStats
from worldmodels.deterministic import DeterministicModel


class Ensemble(WorldModel):
    """K :class:`DeterministicModel` members with the shared call (``rollout`` steps the
    members' mean state, i.e. mean propagation).

    ``step(state, action, z=None) -> [B, S]`` and ``rollout(...) -> [B, T, S]`` return the
    members' mean; :meth:`rollout_members` gives every member's own trajectory
    ``[K, B, T, S]`` and :meth:`disagreement` their per-step variance ``[B, T, S]``.
    ``bootstrap``: every member weights each training window by a Poisson(1) count.
    """

    kind = "Ensemble"

    def __init__(self, state_dim: int, action_dim: int, ncond: int = 1, k: int = 5,
                 hidden: int = 128, layers: int = 2, dropout: float = 0.1,
                 bootstrap: bool = True) -> None:
        super().__init__(state_dim, action_dim, ncond)
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"k (ensemble size) must be an int >= 2, got {k!r}")
        self.k, self.hidden, self.layers, self.dropout = k, hidden, layers, float(dropout)
        self.bootstrap = bool(bootstrap)
        self.members = nn.ModuleList(
            DeterministicModel(state_dim, action_dim, ncond, hidden, layers, dropout)
            for _ in range(k)
        )

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "ncond": self.ncond,
                "k": self.k, "hidden": self.hidden, "layers": self.layers,
                "dropout": self.dropout, "bootstrap": self.bootstrap}

    def set_normalizer(self, stats: NormStats | Mapping[str, Any]) -> None:
        super().set_normalizer(stats)
        for m in self.members:
            m.set_normalizer(stats)

    def _predict(self, context: torch.Tensor, action: torch.Tensor,
                 z: torch.Tensor | None) -> torch.Tensor:
        return torch.stack([m._predict(context, action, None) for m in self.members]).mean(0)

    def rollout_members(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every member's own open-loop rollout ``[K, B, T, S]``."""
        return torch.stack([m.rollout(context, actions) for m in self.members])

    def disagreement(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-step variance across members ``[B, T, S]`` (raw units squared)."""
        return self.rollout_members(context, actions).var(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum of the members' (bootstrap-weighted) rollout MSE losses."""
        total, mses = 0.0, []
        B = batch["context"].shape[0]
        for m in self.members:
            pred = m.rollout(batch["context"], batch["actions"])
            err = (((pred - batch["targets"]) / self.delta_std) ** 2).mean(dim=(1, 2))  # [B]
            if self.bootstrap and self.training:
                w = torch.poisson(torch.ones(B, device=err.device))
                loss = (w * err).sum() / w.sum().clamp_min(1.0)
            else:
                loss = err.mean()
            total = total + loss
            mses.append(err.mean().detach())
        return {"loss": total, "mse": torch.stack(mses).mean()}
