"""An ensemble of K deterministic models (as in PETS): a second uncertainty estimate,
independent of MC-dropout, from the disagreement between members trained from
different initialisations on bootstrap-weighted batches.

The K members share the :class:`~worldmodels.deterministic.DeterministicModel`
architecture but are evaluated together: every layer holds ``[K, in, out]`` weights and
runs as one batched matrix product over ``[K, B, in]`` inputs. The training loss runs
the same operations outside the modules, as one autograd node for a one-step window
(:class:`_StepLoss`) or one per step of a longer window (:class:`_MemberMLP`), with the
backward written out: the same values as through the modules, without the per-operation
graph bookkeeping that dominates a small ensemble's training step on CPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch._utils import _unflatten_dense_tensors as unflatten_dense_tensors
from torch.autograd.function import once_differentiable

from worldplan.worldmodels.base import MCDropout, WorldModel
from worldplan.worldmodels.deterministic import drawn_masks, mask_block


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


def _relu_drop(z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``relu(z) * mask`` in place on ``z`` (a fresh product): the values of ReLU then
    :class:`MCDropout` with that mask, without two more ``[K, B, H]`` allocations."""
    z.relu_()
    return z if mask is None else z.mul_(mask)


def _relu_drop_grad(g: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                    own: bool) -> torch.Tensor:
    """The gradient through :func:`_relu_drop` (output ``y``), as autograd computes it for
    ReLU then the mask product: ``g * mask``, zero where ``y <= 0``. ``own``: ``g`` may be
    overwritten."""
    if mask is not None:
        g = g.mul_(mask) if own else g * mask
    elif not own:
        g = g.clone()
    return torch.ops.aten.threshold_backward.grad_input(g, y, 0, grad_input=g)


def _mlp_forward(x: torch.Tensor, u: torch.Tensor, n_enc: int,
                 masks: list[torch.Tensor] | None, weights: tuple[torch.Tensor, ...]
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The members' normalised step ``x [(K,) B, ncond*S], u [(K,) B, A] -> [K, B, S]``
    without autograd (``[B, ...]`` inputs are shared by the members), and what
    :func:`_mlp_backward` needs. ``weights``: ``(W, b)`` of the encoder layers, the
    action embedding, the decoder layers and the output layer, in that order; ``masks``:
    one ``[K, B, H]`` per dropout layer in call order, or None (no dropout)."""
    k = weights[0].shape[0]
    ms: list[torch.Tensor | None] = list(masks) if masks is not None else \
        [None] * (len(weights) // 2 - 1)
    ue = u.unsqueeze(0).expand(k, -1, -1) if u.ndim == 2 else u
    h = x.unsqueeze(0).expand(k, -1, -1) if x.ndim == 2 else x
    inputs, outs = [], []  # each linear layer's input; each ReLU-dropout's output
    for i in range(n_enc):
        inputs.append(h)
        h = _relu_drop(torch.baddbmm(weights[2 * i + 1], h, weights[2 * i]), ms[i])
        outs.append(h)
    a = 2 * n_enc  # the action embedding's (W, b)
    h = torch.baddbmm(weights[a + 1], ue, weights[a]).add_(h)  # encoder + embedding
    h = _relu_drop(h, ms[n_enc])
    outs.append(h)
    for i in range(a + 2, len(weights) - 2, 2):
        inputs.append(h)
        h = _relu_drop(torch.baddbmm(weights[i + 1], h, weights[i]), ms[len(outs)])
        outs.append(h)
    inputs.append(h)
    out = torch.baddbmm(weights[-1], h, weights[-2])
    return out, [ue, *inputs, *outs, *(m for m in ms if m is not None)]


def _mlp_backward(g: torch.Tensor, n_enc: int, saved: list[torch.Tensor] | tuple,
                  weights: tuple[torch.Tensor, ...], need_x: bool, need_u: bool,
                  out: list[torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
    """The gradients of :func:`_mlp_forward` for the output gradient ``g [K, B, S]``
    (may be overwritten): ``(x, u, weights)`` with the operations autograd runs for the
    layers' forward (so the same values): ``[K, B, ...]`` input gradients, None where not
    ``need_x`` / ``need_u``. ``out``: tensors (shaped as ``weights``) to write the weight
    gradients into."""
    n_lin = len(weights) // 2 - 1  # the linear layers without the action embedding
    ue, inputs, outs = saved[0], saved[1:1 + n_lin], saved[1 + n_lin:1 + 2 * n_lin]
    ms = list(saved[1 + 2 * n_lin:]) or [None] * n_lin
    grads: list[torch.Tensor] = [None] * len(weights)  # type: ignore[list-item]
    gx = gu = None
    for j in range(n_lin - 1, -1, -1):
        w = 2 * j if j < n_enc else 2 * j + 2  # the layer's (W, b); the embedding first
        grads[w] = torch.bmm(inputs[j].transpose(1, 2), g,
                             out=None if out is None else out[w])
        grads[w + 1] = torch.sum(g, 1, keepdim=True, out=None if out is None else out[w + 1])
        if j == 0:
            if need_x:
                gx = g.bmm(weights[0].transpose(1, 2))
            break
        g = g.bmm(weights[w].transpose(1, 2))
        # back through the ReLU-dropout that made this layer's input
        o = j - 1 if j < n_enc else j
        g = _relu_drop_grad(g, outs[o], ms[o], own=True)
        if o == n_enc:  # the sum encoder + embedding, then the encoder's last block
            a = 2 * n_enc
            grads[a] = torch.bmm(ue.transpose(1, 2), g, out=None if out is None else out[a])
            grads[a + 1] = torch.sum(g, 1, keepdim=True,
                                     out=None if out is None else out[a + 1])
            if need_u:
                gu = g.bmm(weights[a].transpose(1, 2))
            g = _relu_drop_grad(g, outs[n_enc - 1], ms[n_enc - 1], own=True)
    return gx, gu, grads


class _MemberMLP(torch.autograd.Function):
    """:func:`_mlp_forward` as one autograd node (a step of a multi-step training
    rollout): the same values as the layers' modules, without the per-operation graph
    bookkeeping that a training step of a small ensemble spends much of its time on."""

    @staticmethod
    def forward(fctx: Any, x: torch.Tensor, u: torch.Tensor, n_enc: int,
                masks: list[torch.Tensor] | None, *weights: torch.Tensor) -> torch.Tensor:
        out, saved = _mlp_forward(x, u, n_enc, masks, weights)
        fctx.n_enc, fctx.n_saved = n_enc, len(saved)
        fctx.x_shared, fctx.u_shared = x.ndim == 2, u.ndim == 2
        fctx.save_for_backward(*saved, *weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = fctx.saved_tensors
        weights = saved[fctx.n_saved:]
        gx, gu, grads = _mlp_backward(g, fctx.n_enc, saved[:fctx.n_saved], weights,
                                      fctx.needs_input_grad[0], fctx.needs_input_grad[1])
        if gx is not None and fctx.x_shared:
            gx = gx.sum(0)
        if gu is not None and fctx.u_shared:
            gu = gu.sum(0)
        return (gx, gu, None, None, *grads)


class _StepLoss(torch.autograd.Function):
    """:class:`Ensemble`'s one-step training loss as one autograd node: from the raw
    context ``[B, ncond, S]``, action ``[B, A]`` and target ``[B, 1, S]`` (none with a
    gradient) to the summed (bootstrap-weighted) member losses, by the operations
    :meth:`Ensemble.forward` runs through the modules, forward and backward (the same
    values). Returns ``(loss, per-member-and-window error [K, B])``."""

    @staticmethod
    def forward(fctx: Any, model: Ensemble, context: torch.Tensor, action: torch.Tensor,
                target: torch.Tensor, w: torch.Tensor | None,
                masks: list[torch.Tensor] | None, *weights: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = model.norm_state(context).flatten(-2)
        out, saved = _mlp_forward(x, model.norm_action(action), model.layers, masks, weights)
        pred = (context[:, -1] + model.denorm_delta(out)).unsqueeze(2)  # [K, B, 1, S]
        diff = (pred - target) / model.delta_std
        err = (diff ** 2).mean(dim=(2, 3))  # [K, B]
        if w is not None:
            wsum = w.sum(1).clamp_min(1.0)
            loss = ((w * err).sum(1) / wsum).sum()
        else:
            wsum = None
            loss = err.mean(1).sum()
        fctx.n_enc, fctx.n_saved, fctx.wsum = model.layers, len(saved), wsum
        fctx.n_params = sum(t.numel() for t in weights)
        fctx.std = model.delta_std
        fctx.save_for_backward(*saved, *weights, diff, w if w is not None else diff)
        fctx.mark_non_differentiable(err)
        return loss, err

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, g: torch.Tensor, _g_err: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        saved = fctx.saved_tensors
        n = fctx.n_saved
        diff, w = saved[-2], saved[-1]
        weights = saved[n:-2]
        K, B = diff.shape[:2]
        # autograd's backward of the loss expression, node by node
        # (broadcasting where autograd expands: the same values)
        if fctx.wsum is not None:
            g_err = (g / fctx.wsum).unsqueeze(1) * w
        else:
            g_err = g.expand(K, B) / B
        g_sq = g_err.view(K, B, 1, 1) / (diff.shape[2] * diff.shape[3])
        g_diff = g_sq * (2.0 * diff)
        g_out = (g_diff / fctx.std)[:, :, 0] * fctx.std
        # the weight gradients in one buffer, in the parameters' order: a flat optimiser
        # (training.FlatAdam) takes them from there without gathering them
        flat = torch.empty(fctx.n_params, dtype=g_out.dtype, device=g_out.device)
        views = unflatten_dense_tensors(flat, weights)
        _, _, grads = _mlp_backward(g_out, fctx.n_enc, saved[:n], weights, False, False,
                                    views)
        return (None, None, None, None, None, None, *grads)


def _batched_mlp(k: int, inp: int, hidden: int, layers: int, dropout: float,
                 out: int | None = None) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [BatchedLinear(k, width, hidden), nn.ReLU(), MCDropout(dropout, inplace=True)]
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
            nn.ReLU(), MCDropout(dropout, inplace=True),
            _batched_mlp(k, hidden, hidden, layers - 1, dropout, out=self.state_dim),
        )
        self.use_fast_masks()
        self._drops = self.dropout_layers()  # in the order a step calls them
        self._mask_layers = tuple(self._drops)  # (``_drops`` is what drawn_masks fills)
        # the linear layers in :class:`_MemberMLP`'s order (encoder, embedding, decoder)
        self._linears = [m for m in self.encoder if isinstance(m, BatchedLinear)] + [
            self.action_embed] + [m for m in self.decoder.modules()
                                  if isinstance(m, BatchedLinear)]

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

    def _fused_masks(self, steps: int) -> list[list[torch.Tensor] | None] | None:
        """Per step, the dropout masks of every layer in call order (None: no dropout),
        taken from the queues :func:`drawn_masks` filled; None when the layers would draw
        their masks some other way (frozen, pooled, MC-dropout in eval mode), for which
        the training loss goes through the modules."""
        drops = self._mask_layers
        if not any(m.p > 0.0 and (m.training or m.force) for m in drops):
            return [None] * steps
        if all(m.p > 0.0 and len(m._queue) == steps for m in drops):
            # a layer's queue holds the last step's mask first
            return [[m._queue.pop() for m in drops] for _ in range(steps)]
        return None

    def _fused_rollout(self, context: torch.Tensor, actions: torch.Tensor,
                       masks: list[list[torch.Tensor] | None]) -> torch.Tensor:
        """:meth:`rollout_members`' trajectories ``[K, B, T, S]`` (the same values) with
        every step's layers one :class:`_MemberMLP` node and the dropout masks ``masks``
        (one list per step)."""
        ctx = self._as_context(context, "context")
        actions = self._tensor("actions", actions)
        B, T = ctx.shape[0], actions.shape[1]
        if actions.ndim != 3 or actions.shape[0] != B or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must have shape [{B}, T, {self.action_dim}], got "
                             f"{list(actions.shape)}")
        weights = [t for m in self._linears for t in (m.weight, m.bias)]
        out = []
        for t in range(T):
            x = self.norm_state(ctx).flatten(-2)  # [B or K, B, ncond*S]: shared at t = 0
            delta = _MemberMLP.apply(x, self.norm_action(actions[:, t]), self.layers,
                                     masks[t], *weights)
            nxt = ctx[..., -1, :] + self.denorm_delta(delta)  # [K, B, S]
            out.append(nxt)
            if t + 1 < T:
                if ctx.ndim == 3:
                    ctx = ctx.unsqueeze(0).expand(self.k, -1, -1, -1)
                ctx = torch.cat([ctx[:, :, 1:], nxt[:, :, None]], dim=2)
        return torch.stack(out, dim=2)

    def disagreement(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-step variance across members ``[B, T, S]`` (raw units squared)."""
        return self.rollout_members(context, actions).var(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum over members of their (bootstrap-weighted) rollout MSE, in delta-std units."""
        actions, context, targets = batch["actions"], batch["context"], batch["targets"]
        boot = self.bootstrap and self.training
        shape = (self.k, actions.shape[0], self.hidden)
        if actions.ndim == 3 and actions.shape[1] == 1 and context.ndim == 3 and \
                not (context.requires_grad or actions.requires_grad or targets.requires_grad):
            # one step from data (the usual window): the whole loss as one autograd node
            self._check_window(context, actions, targets)
            masks: list[torch.Tensor] | None = None
            fused = not any(m.p > 0.0 and (m.training or m.force) for m in self._mask_layers)
            if not fused and self.training and len(self._drops) == len(self._mask_layers):
                block = mask_block(self._drops, shape, 1, actions)  # [1, L, n]
                if block is not None:
                    n = math.prod(shape)
                    masks = list((block[0] if block.shape[2] == n else block[0, :, :n])
                                 .view(-1, *shape).unbind(0))
                    fused = True
            if fused:
                w = torch.poisson(torch.ones(self.k, actions.shape[0], dtype=actions.dtype,
                                             device=actions.device)) if boot else None
                weights = [t for m in self._linears for t in (m.weight, m.bias)]
                loss, err = _StepLoss.apply(self, context, actions[:, 0], targets, w, masks,
                                            *weights)
                return {"loss": loss, "mse": err.mean()}
        with drawn_masks(self._drops if self.training else [], shape, actions.shape[1],
                         actions):
            masks = self._fused_masks(actions.shape[1])
            if masks is None:
                pred = self.rollout_members(context, actions)  # [K, B, T, S]
            else:
                pred = self._fused_rollout(context, actions, masks)
        err = (((pred - targets) / self.delta_std) ** 2).mean(dim=(2, 3))  # [K, B]
        if boot:
            w = torch.poisson(torch.ones_like(err))
            loss = ((w * err).sum(1) / w.sum(1).clamp_min(1.0)).sum()
        else:
            loss = err.mean(1).sum()
        return {"loss": loss, "mse": err.mean().detach()}

    def _check_window(self, context: torch.Tensor, actions: torch.Tensor,
                      targets: torch.Tensor) -> None:
        """A one-step window's shapes (what the modules' rollout would reject)."""
        B = context.shape[0]
        if context.shape[1:] != (self.ncond, self.state_dim):
            raise ValueError(f"context must have shape [B, {self.ncond}, {self.state_dim}], "
                             f"got {list(context.shape)}")
        if actions.shape != (B, 1, self.action_dim):
            raise ValueError(f"actions must have shape [{B}, T, {self.action_dim}], got "
                             f"{list(actions.shape)}")
        if targets.shape != (B, 1, self.state_dim):
            raise ValueError(f"targets must have shape [{B}, 1, {self.state_dim}], got "
                             f"{list(targets.shape)}")
