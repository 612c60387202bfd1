"""Deterministic forward model: an MLP that predicts the normalised change of the last
state, with dropout (default p=0.1) after every hidden layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worldplan.worldmodels.base import MCDropout, WorldModel, mlp


class DeterministicModel(WorldModel):
    """``s[t+1] = s[t] + denorm(f(norm(s[t-ncond+1..t]), norm(a[t])))``.

    Architecture: ``encoder`` (MLP over the flattened normalised context, ``layers``
    hidden layers of width ``hidden``) plus ``action_embed`` (linear) summed into one
    hidden vector, then ``decoder`` (ReLU, dropout, ``layers - 1`` hidden layers, linear
    to ``S``). :class:`~worldmodels.stochastic.StochasticModel` adds a latent to the same
    sum, so its weights warm-start from this model's.

    ``step(state [B, S] or [B, ncond, S], action [B, A], z=None) -> [B, S]`` (``z`` is
    accepted and ignored); ``rollout(context [B, ncond, S], actions [B, T, A]) -> [B, T, S]``.
    Set ``model.mc_dropout = True`` to keep dropout on in eval mode.
    """

    kind = "DeterministicModel"

    def __init__(self, state_dim: int, action_dim: int, ncond: int = 1, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__(state_dim, action_dim, ncond)
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        self.hidden, self.layers, self.dropout = hidden, layers, float(dropout)
        self.encoder = mlp(self.ncond * self.state_dim, hidden, layers, dropout)
        self.action_embed = nn.Linear(self.action_dim, hidden)
        self.decoder = nn.Sequential(
            nn.ReLU(), MCDropout(dropout),
            mlp(hidden, hidden, layers - 1, dropout, out=self.state_dim),
        )
        self.use_fast_masks()

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "ncond": self.ncond,
                "hidden": self.hidden, "layers": self.layers, "dropout": self.dropout}

    def _hidden(self, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Raw context ``[B, ncond, S]`` and action ``[B, A]`` -> hidden ``[B, H]``."""
        ctx = self.norm_state(context).flatten(1)
        return self.encoder(ctx) + self.action_embed(self.norm_action(action))

    def _decode(self, context: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return context[:, -1] + self.denorm_delta(self.decoder(h))

    def _predict(self, context: torch.Tensor, action: torch.Tensor,
                 z: torch.Tensor | None) -> torch.Tensor:
        return self._decode(context, self._hidden(context, action))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss on a window batch (``context [B, ncond, S]``, ``actions
        [B, T, A]``, ``targets [B, T, S]``): the mean squared error of the open-loop
        rollout, in units of the one-step delta std. Returns ``loss`` and ``mse``."""
        pred = self.rollout(batch["context"], batch["actions"])
        mse = (((pred - batch["targets"]) / self.delta_std) ** 2).mean()
        return {"loss": mse, "mse": mse.detach()}
