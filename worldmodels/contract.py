"""The one world-model contract: a model state, and what every model does with it.

Every world model (vector or image; deterministic, cVAE or ensemble) is driven the same
way, in the spirit of mbrl-lib's ``Model.reset`` / ``sample(action, model_state)``::

    ms = model.reset(context [B, ncond, S], frames=None | [B, ncond, C, H, W])
    ms = model.advance(ms, action [B, A], z=None | [B, Z])   # one step
    traj = model.unroll(ms, actions [B, T, A], z=None | [B, T, Z])

A :class:`ModelState` carries the context window of states and, for an image model, of
frames; ``ms.state`` ``[B, S]`` and ``ms.image`` ``[B, C, H, W]`` are the newest entries.
Nobody branches on the model's kind: planners, policy learners and the uncertainty
estimate pass a ``ModelState`` around and read ``state`` / ``image`` where they need them.
The tensor calls ``model.step(state, action)`` and ``model.rollout(context, actions)``
remain for vector models, whose state is the whole story.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class ModelState:
    """A batch of world-model states.

    ``context`` ``[B, ncond, S]``: the last ``ncond`` states, raw units, oldest first;
    ``frames`` ``[B, ncond, C, H, W]`` in [0, 1], or None for a vector model.
    """

    context: torch.Tensor
    frames: torch.Tensor | None = None

    # -- the newest entries --------------------------------------------------------------
    @property
    def state(self) -> torch.Tensor:
        """The current state ``[B, S]``."""
        return self.context[:, -1]

    @property
    def image(self) -> torch.Tensor | None:
        """The current frame ``[B, C, H, W]``, or None."""
        return None if self.frames is None else self.frames[:, -1]

    # -- tensor-like attributes, so planners treat it as a batch of rows -----------------
    @property
    def shape(self) -> torch.Size:
        """The shape of :attr:`state`, ``[B, S]``."""
        return self.context.shape[::2]

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def dtype(self) -> torch.dtype:
        return self.context.dtype

    def __len__(self) -> int:
        return self.context.shape[0]

    def _map(self, fn) -> ModelState:
        return ModelState(fn(self.context), None if self.frames is None else fn(self.frames))

    def detach(self) -> ModelState:
        return self._map(torch.Tensor.detach)

    def repeat_rows(self, times: int) -> ModelState:
        """Each row repeated ``times`` times in place (``repeat_interleave``), ``[B*times]``."""
        return self._map(lambda t: t.repeat_interleave(times, 0))

    def tile(self, times: int) -> ModelState:
        """The whole batch repeated ``times`` times, ``[times*B]`` (sample-major)."""
        return self._map(lambda t: t.repeat(times, *([1] * (t.ndim - 1))))

    def is_finite(self) -> bool:
        ok = bool(torch.isfinite(self.context).all())
        return ok and (self.frames is None or bool(torch.isfinite(self.frames).all()))

    def then(self, state: torch.Tensor, image: torch.Tensor | None = None) -> ModelState:
        """The window moved on by one step: ``state`` ``[B, S]`` (and ``image``) appended,
        the oldest entry dropped."""
        ctx = torch.cat([self.context[:, 1:], state[:, None]], 1)
        if self.frames is None:
            return ModelState(ctx)
        if image is None:
            raise ValueError("this model state has frames: give the next image too")
        return ModelState(ctx, torch.cat([self.frames[:, 1:], image[:, None]], 1))


@dataclass(frozen=True)
class Trajectory:
    """What :meth:`WorldModel.unroll` predicts: ``states`` ``[B, T, S]``, ``images``
    ``[B, T, C, H, W]`` (None for a vector model) and ``last``, the model state after the
    last step (to continue from)."""

    states: torch.Tensor
    images: torch.Tensor | None
    last: ModelState


def rows_of(state: torch.Tensor | ModelState, times: int) -> torch.Tensor | ModelState:
    """``state`` (a ``[B, S]`` tensor or a :class:`ModelState`) with every row repeated
    ``times`` times in place: the ``[B*times]`` batch a planner evaluates candidates on."""
    if isinstance(state, ModelState):
        return state.repeat_rows(times)
    return state.repeat_interleave(times, 0)


class Advances(Protocol):
    """What a closed loop needs of a model: one step of the contract. Every
    :class:`~worldplan.worldmodels.base.WorldModel` has it, and so has
    :class:`DynamicsModel` (a plain dynamics callable)."""

    def advance(self, ms: ModelState, action: torch.Tensor,
                z: torch.Tensor | None = None) -> ModelState: ...


@dataclass(frozen=True)
class _MarkovState(ModelState):
    """A one-state model state whose :attr:`state` is the tensor it was made from, not a
    view of the window: every consumer (the policy, the next step, the cost) takes that
    tensor itself, so backprop through a plain dynamics callable sums the gradients in the
    same order as a bare ``state = dynamics(state, action)`` loop, bit for bit."""

    newest: torch.Tensor | None = None

    @property
    def state(self) -> torch.Tensor:
        return self.context[:, -1] if self.newest is None else self.newest


def _markov(state: torch.Tensor) -> ModelState:
    return _MarkovState(state[:, None], None, state)


class DynamicsModel:
    """A plain dynamics callable ``dynamics(state [B, S], action [B, A]) -> [B, S]`` (a
    task's true ``step``, or a learned model's ``step`` wrapped by a task rule) presented as
    a model of the contract, so one closed loop drives it and the world models alike.

    Its state is Markov: the model state holds one context state, no frames and no latent.
    """

    def __init__(self, dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        if not callable(dynamics):
            raise TypeError(f"dynamics must be callable, got {type(dynamics).__name__}")
        self.dynamics = dynamics

    def reset(self, context: torch.Tensor, frames: torch.Tensor | None = None) -> ModelState:
        """The model state of ``context`` ``[B, S]`` or ``[B, ncond, S]`` (the newest state
        is all a Markov dynamics needs)."""
        if frames is not None:
            raise ValueError("a dynamics callable is a vector model: it takes no frames")
        if not isinstance(context, torch.Tensor) or context.ndim not in (2, 3):
            shape = (list(context.shape) if isinstance(context, torch.Tensor)
                     else type(context).__name__)
            raise ValueError(f"context must be a [B, S] or [B, ncond, S] tensor, got {shape}")
        return _markov(context if context.ndim == 2 else context[:, -1])

    def advance(self, ms: ModelState, action: torch.Tensor,
                z: torch.Tensor | None = None) -> ModelState:
        """The model state one ``action`` ``[B, A]`` later; differentiable as the dynamics."""
        if z is not None:
            raise ValueError("a dynamics callable has no latent: z must be None")
        return _markov(self.dynamics(ms.state, action))

    def unroll(self, ms: ModelState, actions: torch.Tensor,
               z: torch.Tensor | None = None) -> Trajectory:
        """Open loop from ``ms`` under ``actions`` ``[B, T, A]``: states ``[B, T, S]``."""
        if actions.ndim != 3 or actions.shape[0] != len(ms) or actions.shape[1] < 1:
            raise ValueError(f"actions must have shape [{len(ms)}, T >= 1, A], got "
                             f"{list(actions.shape)}")
        states = []
        for t in range(actions.shape[1]):
            ms = self.advance(ms, actions[:, t], None if z is None else z[:, t])
            states.append(ms.state)
        return Trajectory(torch.stack(states, 1), None, ms)
