"""Epistemic uncertainty of a world model: MC-dropout variance (the PPUU uncertainty
cost is built on it) and, for ensembles, member disagreement; AUROC to score how well
an estimate separates in-distribution inputs from ones outside the data support."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch

from worldplan.worldmodels.base import WorldModel
from worldplan.worldmodels.contract import ModelState


class MCUncertainty(NamedTuple):
    """MC-dropout statistics per step: ``mean``/``var`` ``[B, T, S]`` (raw units) and, for
    image models, ``image_mean``/``image_var`` ``[B, T, C, H, W]`` (pixels in [0, 1])."""

    mean: torch.Tensor
    var: torch.Tensor
    image_mean: torch.Tensor | None = None
    image_var: torch.Tensor | None = None

    def total(self, model: WorldModel) -> torch.Tensor:
        """Scalar uncertainty per step ``[B, T]``: state variance in normalised units
        (divided by the delta std squared) summed over dimensions, plus the mean pixel
        variance for image models."""
        out = (self.var / model.delta_std**2).sum(-1)
        if self.image_var is not None:
            out = out + self.image_var.flatten(2).mean(-1)
        return out


def mc_uncertainty(model: WorldModel, context: torch.Tensor | ModelState,
                   actions: torch.Tensor, n: int = 10, z: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   masks: str = "step") -> MCUncertainty:
    """Roll ``model`` out ``n`` times with dropout on, the same ``z`` and actions for every
    sample, batched (the batch is repeated ``n`` times, one forward pass per step).

    The start is a :class:`ModelState` (``model.reset(context, frames)``; the only form an
    image model takes), or for a vector model its ``context`` ``[B, ncond, S]`` (or
    ``[B, S]``); ``actions`` ``[B, T, A]``, ``z`` ``[B, T, Z]`` or ``[B, Z]`` (drawn once
    from the prior when None for a stochastic model). Differentiable with respect to
    ``actions`` (and the start). The model's train/eval mode is left unchanged.
    ``masks``: ``step`` draws fresh dropout masks at every step (PPUU); ``trajectory``
    keeps each sample's masks for the whole rollout (one sampled network per sample;
    several times cheaper on CPU, where drawing masks dominates).
    """
    if masks not in ("step", "trajectory"):
        raise ValueError(f"masks must be 'step' or 'trajectory', got {masks!r}")
    if not isinstance(model, WorldModel):
        raise TypeError(f"model must be a WorldModel, got {type(model).__name__}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n (MC samples) must be an int >= 2, got {n!r}")
    start = context if isinstance(context, ModelState) else model.reset(context)
    if not isinstance(actions, torch.Tensor) or actions.ndim != 3:
        raise ValueError(f"actions must be a [B, T, A] tensor, got "
                         f"{list(getattr(actions, 'shape', []))}")
    B, T = len(start), actions.shape[1]
    if model.z_dim and z is None:
        with torch.no_grad():
            z = model.sample_prior(B, T, context=start.context, generator=generator)

    def rep(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.repeat(n, *([1] * (x.ndim - 1)))

    layers = model.dropout_layers()  # one walk over the modules for all the switches
    previous = [m.force for m in layers]
    for m in layers:
        m.force = True
    if masks == "trajectory":
        frozen = model.frozen_masks(layers)
    elif start.frames is None:  # vector models: fresh masks from bulk draws
        frozen = model.pooled_masks(calls=T, layers=layers)
    else:
        frozen = contextlib.nullcontext()
    try:
        with frozen:
            traj = model.unroll(start.tile(n), rep(actions), z=rep(z))
    finally:
        for m, flag in zip(layers, previous, strict=True):
            m.force = flag
    states = traj.states.view(n, B, *traj.states.shape[1:])
    result = MCUncertainty(states.mean(0), states.var(0))
    if traj.images is not None:
        frames = traj.images.view(n, B, *traj.images.shape[1:])
        result = result._replace(image_mean=frames.mean(0), image_var=frames.var(0))
    return result


def auroc(scores_in: np.ndarray | torch.Tensor, scores_out: np.ndarray | torch.Tensor) -> float:
    """Probability that an out-of-distribution score exceeds an in-distribution one (ties
    count 1/2): the area under the ROC curve of "score > threshold means OOD"."""
    a = np.asarray(torch.as_tensor(scores_in).detach().cpu(), dtype=np.float64).ravel()
    b = np.asarray(torch.as_tensor(scores_out).detach().cpu(), dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc needs at least one in- and one out-of-distribution score")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[a.size :].sum() - b.size * (b.size + 1) / 2) / (a.size * b.size))
