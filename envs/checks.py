"""The checks every worldplan environment's ``step`` makes, in one place: an action must be
finite numbers of the right size, and an episode that ended (``terminated`` or
``truncated``) must be ``reset`` before it is stepped again, as gymnasium's own checker
expects."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class ResetNeeded(gym.error.ResetNeeded, RuntimeError):
    """``step`` before ``reset``, or after the episode ended."""


def start_episode(env: gym.Env) -> None:
    """Call at the end of ``reset``."""
    env._episode_over = False


def check_step(env: gym.Env, action, size: int, meaning: str) -> np.ndarray:
    """Call first in ``step``: the action as float64 ``[size]``; ``ValueError`` for a
    non-finite or wrongly sized action, :class:`ResetNeeded` when the episode has not
    started or has ended."""
    over = getattr(env, "_episode_over", None)
    if over is None:
        raise ResetNeeded("call reset() before step()")
    if over:
        raise ResetNeeded("the episode has ended (terminated or truncated); call reset() "
                          "before step()")
    try:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"action must be {size} finite number(s) {meaning}, "
                         f"got {action!r}") from None
    if a.shape != (size,) or not np.isfinite(a).all():
        raise ValueError(f"action must be {size} finite number(s) {meaning}, got {action!r}")
    return a


def end_step(env: gym.Env, terminated: bool, truncated: bool) -> None:
    """Call at the end of ``step`` with what it returns."""
    env._episode_over = bool(terminated or truncated)
