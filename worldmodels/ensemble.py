"""An ensemble of K deterministic models (as in PETS): a second uncertainty estimate,
independent of MC-dropout, from the disagreement between members trained from
different initialisations on bootstrap-weighted batches.

The K members share the :class:`~worldmodels.deterministic.DeterministicModel`
architecture but are evaluated together: every layer holds ``[K, in, out]`` weights and
runs as one batched matrix product over ``[K, B, in]`` inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from worldplan.worldmodels.base import MCDropout, WorldModel
from worldplan.worldmodels.deterministic import drawn_masks


class BatchedLinear(nn.Module):
    """K independent linear layers: ``[K, B, in] -> [K, B, out]`` (``[B, in]`` inputs are
    shared by all members). Initialised like ``nn.Linear``, member by member."""

    def __init__(self, k: int, inp: int, out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, inp, out))
        self.bias = nn.Parameter(torch.empty(k, 1, out))
        bound = 1.0 / math.sqrt(inp)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


def _batched_mlp(k: int, inp: int, hidden: int, layers: int, dropout: float,
                 out: int | None = None) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [BatchedLinear(k, width, hidden), nn.ReLU(), MCDropout(dropout)]
        width = hidden
    if out is not None:
        mods.append(BatchedLinear(k, width, out))
    return nn.Sequential(*mods)


class Ensemble(WorldModel):
    """K deterministic members with the shared call.

    ``step(state, action, z=None) -> [B, S]`` is the members' mean prediction and
    ``rollout(...) -> [B, T, S]`` propagates that mean (mean propagation);
    :meth:`rollout_members` gives every member's own trajectory ``[K, B, T, S]`` and
    :meth:`disagreement` their per-step variance ``[B, T, S]``. ``bootstrap``: every
    member weights each training window by its own Poisson(1) count.
    """

    kind = "Ensemble"

    def __init__(self, state_dim: int, action_dim: int, ncond: int = 1, k: int = 5,
                 hidden: int = 128, layers: int = 2, dropout: float = 0.1,
                 bootstrap: bool = True) -> None:
        super().__init__(state_dim, action_dim, ncond)
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"k (ensemble size) must be an int >= 2, got {k!r}")
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        self.k, self.hidden, self.layers, self.dropout = k, hidden, layers, float(dropout)
        self.bootstrap = bool(bootstrap)
        self.encoder = _batched_mlp(k, self.ncond * self.state_dim, hidden, layers, dropout)
        self.action_embed = BatchedLinear(k, self.action_dim, hidden)
        self.decoder = nn.Sequential(
            nn.ReLU(), MCDropout(dropout),
            _batched_mlp(k, hidden, hidden, layers - 1, dropout, out=self.state_dim),
        )
        self.use_fast_masks()
        self._drops = self.dropout_layers()  # in the order a step calls them

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "ncond": self.ncond,
                "k": self.k, "hidden": self.hidden, "layers": self.layers,
                "dropout": self.dropout, "bootstrap": self.bootstrap}

    def _predict_members(self, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Raw context ``[B, ncond, S]`` or ``[K, B, ncond, S]``, action ``[B, A]`` ->
        every member's next state ``[K, B, S]``."""
        ctx = self.norm_state(context).flatten(-2)  # [(K,) B, ncond*S]
        h = self.encoder(ctx) + self.action_embed(self.norm_action(action))
        last = context[..., -1, :]
        return last + self.denorm_delta(self.decoder(h))

    def _predict(self, context: torch.Tensor, action: torch.Tensor,
                 z: torch.Tensor | None) -> torch.Tensor:
        return self._predict_members(context, action).mean(0)

    def rollout_members(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every member's own open-loop rollout ``[K, B, T, S]`` (``context``
        ``[B, ncond, S]`` or ``[B, S]``, ``actions`` ``[B, T, A]``)."""
        ctx = self._as_context(context, "context")
        actions = self._tensor("actions", actions)
        B = ctx.shape[0]
        if actions.ndim != 3 or actions.shape[0] != B or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must have shape [{B}, T, {self.action_dim}], got "
                             f"{list(actions.shape)}")
        ctx = ctx.unsqueeze(0).expand(self.k, -1, -1, -1)
        out = []
        for t in range(actions.shape[1]):
            nxt = self._predict_members(ctx, actions[:, t])  # [K, B, S]
            out.append(nxt)
            ctx = torch.cat([ctx[:, :, 1:], nxt[:, :, None]], dim=2)
        return torch.stack(out, dim=2)

    def disagreement(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-step variance across members ``[B, T, S]`` (raw units squared)."""
        return self.rollout_members(context, actions).var(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum over members of their (bootstrap-weighted) rollout MSE, in delta-std units."""
        actions = batch["actions"]
        with drawn_masks(self._drops if self.training else [],
                         (self.k, actions.shape[0], self.hidden), actions.shape[1], actions):
            pred = self.rollout_members(batch["context"], actions)  # [K, B, T, S]
        err = (((pred - batch["targets"]) / self.delta_std) ** 2).mean(dim=(2, 3))  # [K, B]
        if self.bootstrap and self.training:
            w = torch.poisson(torch.ones_like(err))
            loss = ((w * err).sum(1) / w.sum(1).clamp_min(1.0)).sum()
        else:
            loss = err.mean(1).sum()
        return {"loss": loss, "mse": err.mean().detach()}
