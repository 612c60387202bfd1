"""Deterministic forward model: an MLP that predicts the normalised change of the last
state, with dropout (default p=0.1) after every hidden layer."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from worldplan.worldmodels.base import MCDropout, WorldModel, mlp


def mask_block(layers: list[MCDropout], shape: tuple[int, ...], steps: int,
               like: torch.Tensor) -> torch.Tensor | None:
    """The training masks of :func:`drawn_masks` ``[steps, len(layers), n >= prod(shape)]``
    (step-major; a mask is the first ``prod(shape)`` values of its row), drawn here; None
    (nothing drawn) where the layers draw their own: without dropout, with masks frozen,
    pooled or per channel."""
    p = layers[0].p if layers else 0.0
    plain = all(m.p == p and m.fast and not (m.frozen or m.pooled or m.channelwise
                                             or m._queue) for m in layers)
    if not layers or p == 0.0 or not plain or steps < 1:
        return None
    n = math.prod(shape)
    nw = (n + 3) // 4  # the words bernoulli_masks draws for one mask
    count = steps * len(layers)
    words = torch.empty(count * nw, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), 2**63 - 1)
    drop = round(p * 65536)
    out = torch.empty(4 * count * nw, dtype=like.dtype, device=like.device)
    torch.ge(words.view(torch.int16), drop - 32768, out=out)
    out.mul_(65536.0 / (65536 - drop))
    return out.view(steps, len(layers), 4 * nw)


@contextlib.contextmanager
def drawn_masks(layers: list[MCDropout], shape: tuple[int, ...], steps: int,
                like: torch.Tensor) -> Iterator[None]:
    """Inside, ``layers`` take their training masks ``[*shape]`` from one draw made here:
    for ``steps`` passes that call every layer once, in order (an MLP's open-loop rollout).

    The values are those the layers would draw one by one: each mask is
    :func:`~worldmodels.base.bernoulli_masks` of ``ceil(n / 4)`` random 64-bit words,
    and one draw of all the words takes the same values from torch's generator, in the
    same order, and leaves it in the same state (tests/test_worldmodels_flat_adam.py
    checks a training run against the layer-by-layer masks). One draw, one comparison and
    one scaling replace one of each (and two allocations) per layer and step. Without
    dropout, with masks frozen, pooled or per channel, nothing is drawn here.
    """
    masks = mask_block(layers, shape, steps, like)
    if masks is None:
        yield
        return
    n = math.prod(shape)
    masks = masks[..., :n]  # [T, L, n]
    for i, layer in enumerate(layers):
        # a layer pops from the end of its queue: the last step's mask first in the list
        layer._queue[:] = [masks[t, i].view(shape) for t in range(steps - 1, -1, -1)]
    try:
        yield
    finally:
        left = [m for m in layers if m._queue]
        for m in layers:
            m._queue.clear()
        if left:
            raise RuntimeError(f"{len(left)} dropout layers left masks unused: the forward "
                               "does not call each layer once per step")


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
            nn.ReLU(), MCDropout(dropout, inplace=True),
            mlp(hidden, hidden, layers - 1, dropout, out=self.state_dim),
        )
        self.use_fast_masks()
        self._drops = self.dropout_layers()  # in the order a step calls them

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

    def _open_loop(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """:meth:`rollout`'s states ``[B, T, S]`` (the same operations on the same values)
        without the model-state bookkeeping of each step, for the training loss."""
        ctx = self._as_context(context, "context")
        actions = self._tensor("actions", actions)
        if actions.ndim != 3 or actions.shape[0] != ctx.shape[0] \
                or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must have shape [{ctx.shape[0]}, T, {self.action_dim}], "
                             f"got {list(actions.shape)}")
        states = []
        for t in range(actions.shape[1]):
            nxt = self._predict(ctx, actions[:, t], None)
            states.append(nxt)
            if t + 1 < actions.shape[1]:
                ctx = torch.cat([ctx[:, 1:], nxt[:, None]], 1)
        return torch.stack(states, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss on a window batch (``context [B, ncond, S]``, ``actions
        [B, T, A]``, ``targets [B, T, S]``): the mean squared error of the open-loop
        rollout, in units of the one-step delta std. Returns ``loss`` and ``mse``."""
        actions = batch["actions"]
        with drawn_masks(self._drops if self.training else [],
                         (actions.shape[0], self.hidden), actions.shape[1], actions):
            pred = self._open_loop(batch["context"], actions)
        mse = (((pred - batch["targets"]) / self.delta_std) ** 2).mean()
        return {"loss": mse, "mse": mse.detach()}
