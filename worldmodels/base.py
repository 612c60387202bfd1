"""What every world model shares: normalisation buffers, the MC-dropout switch, the
``step``/``rollout`` calls, shape checks and plain-data checkpoints.

Conventions: states ``[B, S]`` and actions ``[B, A]`` in RAW units, float32, batch-first;
sequences ``[B, T, ...]``; a context is the last ``ncond`` states ``[B, ncond, S]`` (oldest
first). Models work internally on normalised quantities (statistics held as buffers).

Length: what every model kind shares (normalisation, MC-dropout masks, the model-state
contract, the tensor calls, checkpoints) must stay in the one base class.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from worldplan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
)
from worldplan.worldmodels.contract import ModelState, Trajectory
from worldplan.worldmodels.dataset import STAT_KEYS, NormStats

log = logging.getLogger(__name__)

MODEL_SCHEMA = 1
MODEL_KINDS: dict[str, type[WorldModel]] = {}
_POOL_VALUES = 1 << 20  # most mask values one dropout layer draws at once


def bernoulli_masks(n: int, p: float, like: torch.Tensor,
                    buffers: dict[str, torch.Tensor] | None = None,
                    sfc64: bool | list[np.random.SFC64] = False) -> torch.Tensor:
    """``n`` inverted-dropout mask values ``[n]`` (0 with probability ``p``, else
    ``1 / (1 - p)``) on ``like``'s device and dtype.

    Drawn as 16-bit integers carved out of 64-bit random words: a quarter of the generator
    calls of ``torch.rand``, which dominate MC-dropout on CPU. ``p`` is rounded to a
    multiple of ``2^-16`` (the scale uses the rounded value, so the mean stays 1).
    ``buffers`` (a dict the caller keeps): reuse its tensors instead of allocating (large
    fresh allocations page-fault on every call); the previous result is overwritten.
    ``sfc64`` (CPU only): take the random words from numpy's SFC64 generator, seeded with
    one draw of torch's global generator (so ``torch.manual_seed`` still reproduces a
    run): the raw words 2.8x faster than torch's Mersenne twister, the same uniform bits.
    ``sfc64`` may also be a list the caller keeps for a series of draws: empty, it is
    given that seeded generator, which the later draws of the series continue (one
    seeding instead of one per draw; a series is still reproduced by the torch seed).
    """
    nw = (n + 3) // 4
    drop = round(p * 65536)
    scale = 65536.0 / (65536 - drop)
    if sfc64 and like.device.type == "cpu":
        if isinstance(sfc64, list) and sfc64:
            gen = sfc64[0]
        else:
            gen = np.random.SFC64(int(torch.randint(0, 2**62, (), dtype=torch.int64)))
            if isinstance(sfc64, list):
                sfc64.append(gen)
        words = torch.from_numpy(gen.random_raw(nw).view(np.int64))
        out = None if buffers is None else buffers.get("out")
        if out is None or out.numel() != n or out.dtype != like.dtype or \
                out.device.type != "cpu":
            out = torch.empty(n, dtype=like.dtype)
            if buffers is not None:
                buffers["out"] = out
    else:
        if buffers is None:
            words = torch.empty(nw, dtype=torch.int64, device=like.device)
            out = torch.empty(n, dtype=like.dtype, device=like.device)
        else:
            out = buffers.get("out")
            if out is None or out.numel() != n or out.dtype != like.dtype or \
                    out.device != like.device or buffers.get("words") is None:
                buffers["words"] = torch.empty(nw, dtype=torch.int64, device=like.device)
                out = buffers["out"] = torch.empty(n, dtype=like.dtype, device=like.device)
            words = buffers["words"]
        words.random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)
    bits = bits if bits.shape[0] == n else bits[:n]
    # The comparison written straight into the float output (1.0 kept, 0.0 dropped) and
    # scaled in place: a third of the time of a bool mask followed by torch.where, and
    # the same values (1.0 * scale is scale exactly). P(keep) = 1 - drop / 2^16.
    torch.ge(bits, drop - 32768, out=out)
    return out.mul_(scale)


class MCDropout(nn.Module):
    """Dropout that stays on in eval mode while ``force`` is set (MC-dropout).

    ``channelwise``: on ``[B, C, H, W]`` feature maps drop whole channels (as
    ``nn.Dropout2d``), one draw per channel instead of per pixel. Inside
    :meth:`WorldModel.pooled_masks` masks are cut from a pool drawn in bulk (fresh,
    independent values for every call, far fewer generator calls). ``inplace``: the input
    is always a fresh intermediate nobody else holds (the output of the ``nn.ReLU`` before
    it in a ``Sequential``), so without autograd the mask multiplies it in place instead
    of allocating the product at every call.
    """

    def __init__(self, p: float, channelwise: bool = False, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)
        self.channelwise = bool(channelwise)
        self.inplace = bool(inplace)
        self.force = False
        self.frozen = False  # reuse one mask per input shape (see WorldModel.frozen_masks)
        self.pooled = False  # cut masks from a bulk draw (see WorldModel.pooled_masks)
        self.fast = False  # draw masks with bernoulli_masks (see WorldModel.use_fast_masks)
        self._mask: torch.Tensor | None = None
        self._queue: list[torch.Tensor] = []  # unused masks of the current pool
        self._pool_memory: dict[str, torch.Tensor] = {}  # the pool's memory, reused without grad
        self._pool_calls = 1
        self._pool_rng: list[np.random.SFC64] = []  # the pool's generator, shared by layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not (self.training or self.force):
            return x
        queue = self._queue  # non-empty only inside pooled_masks: the per-step fast path
        if queue and not self.frozen and not self.channelwise:
            mask = queue[-1]
            if mask.shape == x.shape and mask.dtype == x.dtype and mask.device == x.device:
                return self._masked(x, queue.pop())
        shape = (*x.shape[:2], 1, 1) if self.channelwise and x.ndim == 4 else x.shape
        if self.frozen and self._mask is not None and self._mask.shape == shape:
            return self._masked(x, self._mask)
        if self.pooled and not self.frozen:  # a frozen mask must not live in a pool
            mask = self._from_pool(shape, x)
        elif self.fast:
            mask = bernoulli_masks(math.prod(shape), self.p, x).view(shape)
        else:
            # a uniform threshold is cheaper on CPU than F.dropout's Bernoulli draw
            keep = torch.rand(shape, device=x.device, dtype=x.dtype) >= self.p
            mask = keep.to(x.dtype) * (1.0 / (1.0 - self.p))
        if self.frozen:
            self._mask = mask
        return self._masked(x, mask)

    def _masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x * mask``; in place on ``x`` for an ``inplace`` layer without autograd."""
        if self.inplace and not torch.is_grad_enabled() and mask.dtype == x.dtype:
            return x.mul_(mask)
        return x * mask

    def _from_pool(self, shape: tuple[int, ...] | torch.Size, x: torch.Tensor) -> torch.Tensor:
        queue = self._queue
        if not queue or queue[-1].shape != shape or queue[-1].dtype != x.dtype \
                or queue[-1].device != x.device:
            k = math.prod(shape)
            n = max(1, min(self._pool_calls, _POOL_VALUES // max(k, 1)))
            # Without autograd no mask outlives the next refill, so the pool's memory is
            # reused; a mask saved for a backward pass must not be overwritten.
            buffers = None if torch.is_grad_enabled() else self._pool_memory
            pool = bernoulli_masks(n * k, self.p, x, buffers,
                                   sfc64=self._pool_rng).view(n, *shape)
            queue[:] = pool.unbind(0)  # in place: no nn.Module attribute traffic per call
        return queue.pop()


def mlp(
    inp: int, hidden: int, layers: int, dropout: float, out: int | None = None
) -> nn.Sequential:
    """``layers`` blocks Linear -> ReLU -> MCDropout (then a final Linear to ``out``)."""
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(), MCDropout(dropout, inplace=True)]
        width = hidden
    if out is not None:
        mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


def _check_dims(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class WorldModel(nn.Module):
    """Base class. Subclasses set ``kind`` and implement :meth:`_predict` (one normalised
    step) and :meth:`forward` (the training loss on a batch dict)."""

    kind: ClassVar[str] = "WorldModel"
    z_dim: int = 0
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of a model with frames

    def __init__(self, state_dim: int, action_dim: int, ncond: int = 1) -> None:
        super().__init__()
        self.state_dim = _check_dims("state_dim", state_dim)
        self.action_dim = _check_dims("action_dim", action_dim)
        self.ncond = _check_dims("ncond", ncond)
        ident = NormStats.identity(self.state_dim, self.action_dim)
        for key in STAT_KEYS:
            self.register_buffer(key, torch.as_tensor(getattr(ident, key)))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            MODEL_KINDS[cls.kind] = cls

    # -- configuration ---------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (plain data) that rebuild this model."""
        raise NotImplementedError

    def set_normalizer(self, stats: NormStats | Mapping[str, Any]) -> None:
        """Set the normalisation statistics (a :class:`NormStats` or its dict, e.g.
        ``dataset.stats``); their lengths must match ``state_dim``/``action_dim``."""
        if not isinstance(stats, NormStats):
            stats = NormStats.from_dict(stats, "stats")
        if len(stats.state_mean) != self.state_dim or len(stats.action_mean) != self.action_dim:
            raise ValueError(
                f"stats are for state/action dims {len(stats.state_mean)}/"
                f"{len(stats.action_mean)}, the model has {self.state_dim}/{self.action_dim}"
            )
        for key in STAT_KEYS:
            buf = getattr(self, key)
            buf.copy_(torch.as_tensor(getattr(stats, key), dtype=buf.dtype))

    def normalizer(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).detach().cpu().tolist() for k in STAT_KEYS}

    # -- MC dropout --------------------------------------------------------------------
    @property
    def mc_dropout(self) -> bool:
        """True while dropout is forced on in eval mode (MC-dropout sampling)."""
        return any(m.force for m in self.modules() if isinstance(m, MCDropout))

    @mc_dropout.setter
    def mc_dropout(self, flag: bool) -> None:
        for m in self.modules():
            if isinstance(m, MCDropout):
                m.force = bool(flag)

    def dropout_layers(self) -> list[MCDropout]:
        """The model's :class:`MCDropout` modules (a walk over every module: callers that
        switch them several times pass the list to the context managers below)."""
        return [m for m in self.modules() if isinstance(m, MCDropout)]

    @contextlib.contextmanager
    def frozen_masks(self, layers: list[MCDropout] | None = None) -> Iterator[None]:
        """Inside, every dropout layer draws its mask once and reuses it for inputs of the
        same shape: each row of a rollout is one sampled network for the whole
        trajectory (instead of fresh masks at every step, as PPUU does). ``layers``: the
        model's :meth:`dropout_layers`, if the caller has them."""
        layers = self.dropout_layers() if layers is None else layers
        for m in layers:
            m.frozen, m._mask = True, None
        try:
            yield
        finally:
            for m in layers:
                m.frozen, m._mask = False, None

    @contextlib.contextmanager
    def pooled_masks(self, calls: int = 32,
                     layers: list[MCDropout] | None = None) -> Iterator[None]:
        """Inside, every dropout layer cuts its masks from a pool drawn in bulk
        (:func:`bernoulli_masks`), ``calls`` forward calls' worth at a time (e.g. the
        rollout length): still fresh, independent masks for every row and call, at a
        fraction of the generator calls. The pools are dropped on exit, so that seeding
        the global generator reproduces a pooled run; the layers' pools come from one
        SFC64 generator, seeded by torch's at the first draw. ``layers``: the model's
        :meth:`dropout_layers`, if the caller has them."""
        if not isinstance(calls, int) or calls < 1:
            raise ValueError(f"calls must be an int >= 1, got {calls!r}")
        layers = self.dropout_layers() if layers is None else layers
        rng: list[np.random.SFC64] = []  # filled by the first draw
        for m in layers:
            m.pooled, m._pool_calls, m._pool_rng = True, calls, rng
            m._queue.clear()
        try:
            yield
        finally:
            for m in layers:
                m.pooled, m._pool_rng = False, []
                m._queue.clear()

    def use_fast_masks(self) -> None:
        """Draw every dropout mask with :func:`bernoulli_masks` (a quarter of the generator
        calls of ``torch.rand``; the vector models call this at construction)."""
        for m in self.modules():
            if isinstance(m, MCDropout):
                m.fast = True

    def dropout_active(self) -> bool:
        return self.training or self.mc_dropout

    # -- normalisation helpers -------------------------------------------------------------
    def norm_state(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.state_mean) / self.state_std

    def norm_action(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.action_mean) / self.action_std

    def denorm_delta(self, d: torch.Tensor) -> torch.Tensor:
        return d * self.delta_std + self.delta_mean

    def norm_delta(self, d: torch.Tensor) -> torch.Tensor:
        return (d - self.delta_mean) / self.delta_std

    # -- checks ----------------------------------------------------------------------
    def _tensor(self, name: str, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        return x

    def _as_context(self, state: torch.Tensor, name: str = "state") -> torch.Tensor:
        """``[B, S]`` (only when ncond == 1) or ``[B, ncond, S]`` -> ``[B, ncond, S]``."""
        state = self._tensor(name, state)
        if state.ndim == 2 and state.shape[1] == self.state_dim and self.ncond == 1:
            return state[:, None, :]
        if state.ndim == 3 and state.shape[1:] == (self.ncond, self.state_dim):
            return state
        expect = f"[B, {self.state_dim}]" if self.ncond == 1 else (
            f"[B, {self.ncond}, {self.state_dim}] (ncond={self.ncond})")
        raise ValueError(f"{name} must have shape {expect}, got {list(state.shape)}")

    def _check_action(self, action: torch.Tensor, batch: int, name: str = "action") -> None:
        action = self._tensor(name, action)
        if action.ndim != 2 or action.shape != (batch, self.action_dim):
            raise ValueError(
                f"{name} must have shape [{batch}, {self.action_dim}], got {list(action.shape)}"
            )

    def _check_z(self, z: torch.Tensor | None, batch: int, steps: int | None) -> None:
        if z is None or self.z_dim == 0:
            return
        z = self._tensor("z", z)
        ok = z.shape == (batch, self.z_dim) or (
            steps is not None and z.shape == (batch, steps, self.z_dim))
        if not ok:
            expect = f"[{batch}, {self.z_dim}]" + (
                f" or [{batch}, {steps}, {self.z_dim}]" if steps is not None else "")
            raise ValueError(f"z must have shape {expect}, got {list(z.shape)}")

    # -- dynamics --------------------------------------------------------------------
    def _predict(self, context: torch.Tensor, action: torch.Tensor,
                 z: torch.Tensor | None) -> torch.Tensor:
        """One step: raw context ``[B, ncond, S]``, raw action ``[B, A]``, latent ``[B, Z]``
        or None -> raw next state ``[B, S]``."""
        raise NotImplementedError

    def sample_prior(self, batch: int, steps: int | None = None,
                     context: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Latent draws ``[B, Z]`` (or ``[B, T, Z]``) from the prior; None without latents."""
        return None

    def step(self, state: torch.Tensor, action: torch.Tensor,
             z: torch.Tensor | None = None) -> torch.Tensor:
        """Next state ``[B, S]`` from ``state`` ``[B, S]`` (or a context ``[B, ncond, S]``)
        and ``action`` ``[B, A]``, raw units, differentiable w.r.t. both. ``z`` ``[B, Z]``
        is the latent of a stochastic model (drawn from the prior when None)."""
        ctx = self._as_context(state)
        self._check_action(action, ctx.shape[0])
        self._check_z(z, ctx.shape[0], None)
        return self._predict(ctx, action, z)

    def rollout(self, context: torch.Tensor, actions: torch.Tensor,
                z: torch.Tensor | None = None) -> torch.Tensor:
        """Open-loop autoregressive prediction: ``context`` ``[B, ncond, S]`` (or ``[B, S]``
        when ncond == 1), ``actions`` ``[B, T, A]``, optional ``z`` ``[B, T, Z]`` (or
        ``[B, Z]`` reused every step) -> states ``[B, T, S]`` after each action (the states
        of :meth:`unroll`)."""
        return self.unroll(self.reset(context), actions, z).states

    # -- the model-state contract (worldmodels/contract.py) ---------------------------------
    def reset(self, context: torch.Tensor, frames: torch.Tensor | None = None) -> ModelState:
        """The model state of ``context`` ``[B, ncond, S]`` (or ``[B, S]`` when ncond == 1)
        and, for an image model, its ``frames`` ``[B, ncond, C, H, W]`` (uint8 or [0, 1])."""
        ctx = self._as_context(context, "context")
        return ModelState(ctx, self._context_frames(frames, ctx.shape[0]))

    def _context_frames(self, frames: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if frames is not None:
            raise ValueError(f"{self.kind} is a vector model: it takes no frames")
        return None

    def _advance(self, ms: ModelState, action: torch.Tensor, z: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next raw state ``[B, S]`` and frame (None for a vector model), unchecked."""
        return self._predict(ms.context, action, z), None

    def advance(self, ms: ModelState, action: torch.Tensor,
                z: torch.Tensor | None = None) -> ModelState:
        """The model state one ``action`` ``[B, A]`` later (``z`` ``[B, Z]``: the latent of a
        cVAE, drawn from the prior when None). Differentiable w.r.t. the action and the
        state."""
        if not isinstance(ms, ModelState):
            raise TypeError(f"advance takes a ModelState (from model.reset), got "
                            f"{type(ms).__name__}")
        self._check_action(action, len(ms))
        self._check_z(z, len(ms), None)
        return ms.then(*self._advance(ms, action, z))

    def unroll(self, ms: ModelState, actions: torch.Tensor,
               z: torch.Tensor | None = None) -> Trajectory:
        """Open loop from ``ms`` under ``actions`` ``[B, T, A]`` (``z`` ``[B, T, Z]``, or
        ``[B, Z]`` reused every step): the predicted states, frames and last model state."""
        if not isinstance(ms, ModelState):
            raise TypeError(f"unroll takes a ModelState (from model.reset), got "
                            f"{type(ms).__name__}")
        actions = self._tensor("actions", actions)
        B = len(ms)
        if actions.ndim != 3 or actions.shape[0] != B or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must have shape [{B}, T, {self.action_dim}], got "
                             f"{list(actions.shape)}")
        self._check_z(z, B, actions.shape[1])
        states, images = [], []
        for t in range(actions.shape[1]):  # checked once above, so no per-step checks
            zt = None if z is None else (z[:, t] if z.ndim == 3 else z)
            ms = ms.then(*self._advance(ms, actions[:, t], zt))
            states.append(ms.state)
            images.append(ms.image)
        imgs = None if ms.frames is None else torch.stack(images, 1)
        return Trajectory(torch.stack(states, 1), imgs, ms)

    def posterior(self, ms: ModelState, next_state: torch.Tensor,
                  next_image: torch.Tensor | None = None) -> torch.Tensor:
        """The latent ``[B, Z]`` (posterior mean) that explains the observed step from
        ``ms`` to ``next_state`` (and ``next_image``): what a cVAE's encoder infers, used
        to replay an expert's future (MPER). Only for models with ``z_dim > 0``."""
        raise TypeError(f"{self.kind} has no latent (z_dim = 0): no posterior")

    # -- checkpoints -------------------------------------------------------------------
    def to_checkpoint(self) -> dict[str, Any]:
        """Plain data that rebuilds this model: kind, schema, config, state_dict,
        normaliser (never a pickled module)."""
        return {
            "kind": self.kind,
            "model_schema": MODEL_SCHEMA,
            "config": self.config(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            "normalizer": self.normalizer(),
        }

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any], source: str = "payload") -> WorldModel:
        """Rebuild a model from :meth:`to_checkpoint` data (``cls`` may be the base class:
        the kind picks the subclass)."""
        for key in ("kind", "config", "state_dict"):
            if key not in payload:
                raise CheckpointError(f"checkpoint {source} lacks {key!r}")
        kind = payload["kind"]
        target = MODEL_KINDS.get(kind)
        if target is None:
            raise CheckpointError(f"checkpoint {source} holds unknown model kind {kind!r}; "
                                  f"known: {sorted(MODEL_KINDS)}")
        if cls is not WorldModel and not issubclass(target, cls):
            raise CheckpointError(f"checkpoint {source} holds a {kind!r}, expected {cls.kind!r}")
        if payload.get("model_schema", MODEL_SCHEMA) != MODEL_SCHEMA:
            raise CheckpointError(f"checkpoint {source} has model schema "
                                  f"{payload.get('model_schema')}, expected {MODEL_SCHEMA}")
        try:
            model = target(**payload["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {source}: bad model config ({exc})") from None
        load_state_dict_checked(model, payload["state_dict"], source)
        return model


def load_model(source: str | os.PathLike | Mapping[str, Any],
               device: str | torch.device = "cpu") -> WorldModel:
    """Load any world model from a checkpoint file (or an already loaded payload), in eval
    mode on ``device``. Raises ``CheckpointError`` naming the path when it is unusable."""
    if isinstance(source, Mapping):
        payload, name = source, "payload"
    else:
        payload, name = load_checkpoint(Path(source)), str(source)
    if "model" in payload and "kind" not in payload:
        payload = payload["model"]
    model = WorldModel.from_checkpoint(payload, name)
    return model.to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
