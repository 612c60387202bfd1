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

from dataclasses import dataclass

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
