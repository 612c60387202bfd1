"""One closed-loop episode loop for every task: reset, act, step, record, until done.

:func:`run_episodes` runs ``N`` episodes side by side (a batch: a vector env, a batched
simulator, or ``N = 1``): it resets them, asks a controller for actions, steps them,
keeps the per-step quantities asked for, and tracks which episodes are still running.
What is specific to a task (its simulator, its episode rules, a filter between the
observation and the controller) lives in the ``reset`` / ``step`` / ``controller``
callables its caller passes in, so this module imports no environment and no task: the
truck's batched simulator (``envs/truck/episode.py``), the MPC controller
(``planners/mpc/controller.py``), the navigation episodes, the random-data collection
of the gym tasks and the highway evaluation (``experiments/highway_eval.py``) all go
through it.

Conventions (every array is numpy, batch-first):

- ``reset() -> obs``: observations ``[N, ...]`` of the ``N`` new episodes, or a
  ``Transition`` whose ``terminated`` / ``truncated`` mark episodes already over when the
  loop starts (one that ended in a scripted warm-up, say: it is never stepped and keeps
  length 0; the reset's reward and info are not used);
- ``controller(obs) -> action``: ``[N, A]`` (or ``[N]``) for ``obs [N, ...]``; with
  ``active_only`` it sees only the running episodes, ``obs[alive]`` ``[M, ...]``, and
  returns ``[M, ...]`` (the loop scatters it into a zero-filled ``[N, ...]``); without
  ``active_only``, ``obs`` may be any object (a tuple of context tensors, say);
- ``step(action [N, ...], alive [N]) -> Transition``: the next observations, rewards and
  done flags of every episode (rows of episodes that ended earlier are ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

__all__ = ["LoopResult", "Transition", "run_episodes"]

# what the loop itself can record besides a step's ``info`` keys
BUILTIN_RECORDS = ("obs", "action", "next_obs", "reward", "terminated", "truncated")


class Transition(NamedTuple):
    """What ``step`` returns for a batch of ``N`` episodes.

    ``obs`` ``[N, ...]`` the next observations; ``reward`` ``[N]`` (None: no reward, the
    returns stay 0); ``terminated`` / ``truncated`` ``[N]`` bool (None: never);
    ``info``: per-episode arrays ``[N, ...]`` that can be recorded by key.
    """

    obs: Any
    reward: np.ndarray | None = None
    terminated: np.ndarray | None = None
    truncated: np.ndarray | None = None
    info: dict[str, np.ndarray] | None = None


@dataclass
class LoopResult:
    """``N`` episodes run by :func:`run_episodes`.

    ``returns [N]`` (float64 sums of the rewards of each episode's live steps),
    ``lengths [N]`` (int64, steps each episode took), ``terminated`` / ``truncated [N]``
    (how each ended; both False: still running when ``max_steps`` was reached),
    ``steps`` (loop iterations run), ``obs`` (the last observations), ``active [T, N]``
    (which episodes were running at each of the ``T = steps`` iterations) and
    ``records[key] [T, N, ...]`` (every recorded quantity, every row, per step).
    """

    returns: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    steps: int
    obs: Any
    active: np.ndarray
    records: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def done(self) -> np.ndarray:
        """``[N]`` bool: the episodes that ended (terminated or truncated)."""
        return self.terminated | self.truncated

    def live(self, key: str) -> np.ndarray:
        """``records[key]`` of the running episodes only, step by step, episodes in batch
        order within a step: ``[M, ...]`` with ``M = active.sum()`` (the transitions of a
        vector env, without the rows after an episode ended)."""
        if key not in self.records:
            raise ValueError(f"key {key!r} was not recorded; recorded: "
                             f"{', '.join(self.records) or 'nothing'}")
        values = self.records[key]
        if len(values) == 0:
            return values.reshape(0, *values.shape[2:])
        return values[self.active]


def _flags(value: np.ndarray | None, n: int) -> np.ndarray:
    if value is None:
        return np.zeros(n, dtype=bool)
    return np.asarray(value, dtype=bool).reshape(n)


def run_episodes(
    reset: Callable[[], Any],
    step: Callable[[Any, np.ndarray], Transition],
    controller: Callable[[Any], Any],
    n: int,
    max_steps: int,
    *,
    active_only: bool = False,
    record: Iterable[str] = (),
    progress: bool = False,
    desc: str = "episodes",
    postfix: Callable[[LoopResult], dict[str, str]] | None = None,
) -> LoopResult:
    """Run ``n`` episodes in closed loop for at most ``max_steps`` steps.

    Each iteration: stop if no episode runs (episodes that a ``reset`` returning a
    ``Transition`` marks done never run); ``action = controller(obs)`` (of the running
    episodes only with ``active_only``); ``step(action, alive)``; record the
    keys in ``record`` (``obs``, ``action``, ``next_obs``, ``reward``, ``terminated``,
    ``truncated`` or a key of the step's ``info``), every row; add the rewards of the
    running episodes to their returns and count their steps; an episode that terminates
    or truncates is done from then on. ``progress`` shows a tqdm bar (``postfix(result so
    far)`` sets its postfix). See the module docstring for the callables' shapes.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of episodes, got {n!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) \
            or max_steps < 0:
        raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}")
    keys = tuple(record)
    if isinstance(record, str) or any(not isinstance(k, str) for k in keys):
        raise ValueError(f"record must be a collection of key names, got {record!r}")
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    terminated = np.zeros(n, dtype=bool)
    truncated = np.zeros(n, dtype=bool)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    active_rows: list[np.ndarray] = []
    result = LoopResult(returns, lengths, terminated, truncated, 0, None,
                        np.zeros((0, n), dtype=bool))
    obs = reset()
    if isinstance(obs, Transition):
        # episodes over before the first step: done from the start, never stepped
        term, trunc = _flags(obs.terminated, n), _flags(obs.truncated, n)
        terminated |= term
        truncated |= trunc & ~term
        alive &= ~(term | trunc)
        obs = obs.obs
    result.obs = obs
    bar = tqdm(total=max_steps, desc=desc, disable=not progress, leave=False)
    try:
        for _ in range(max_steps):
            if not alive.any():
                break
            if active_only:
                part = np.asarray(controller(obs[alive]))
                action = np.zeros((n, *part.shape[1:]), dtype=part.dtype)
                action[alive] = part
            else:
                action = controller(obs)
            out = step(action, alive)
            term, trunc = _flags(out.terminated, n), _flags(out.truncated, n)
            if keys:
                values = {"obs": obs, "action": action, "next_obs": out.obs,
                          "reward": out.reward, "terminated": term, "truncated": trunc,
                          **(out.info or {})}
                for key in keys:
                    if key not in values or values[key] is None:
                        raise ValueError(f"record names {key!r}, which the step does not "
                                         f"give; it gives {', '.join(values)}")
                    rows[key].append(np.array(values[key], copy=True))
            active_rows.append(alive.copy())
            if out.reward is not None:
                reward = np.asarray(out.reward, dtype=np.float64).reshape(n)
                # + 0.0 leaves a return unchanged to the bit (a sum from +0.0 is never -0.0)
                returns += np.where(alive, reward, 0.0)
            lengths += alive
            ended = alive & (term | trunc)
            terminated |= ended & term
            truncated |= ended & ~term
            alive &= ~ended
            obs = out.obs
            result.steps += 1
            result.obs = obs
            bar.update(1)
            if postfix is not None and progress:
                bar.set_postfix(postfix(result))
    finally:
        bar.close()
    if active_rows:
        result.active = np.stack(active_rows)
    result.records = {k: np.stack(v) if v else np.zeros((0, n)) for k, v in rows.items()}
    return result
