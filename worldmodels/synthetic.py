"""Small synthetic tasks whose true dynamics are known, for tests, figures and benchmarks.

Every generator returns episodes in the :func:`worldplan.worldmodels.dataset.write_dataset` format
and draws from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np


def bimodal_episodes(n: int = 200, T: int = 10, seed: int = 0, gap: float = 1.0,
                     gain: float = 0.5) -> list[dict[str, np.ndarray]]:
    """1-D state, 1-D action: ``s' = 0.5 s + gain * a + gap * c``, c = +1 or -1 with
    probability 1/2 each, independently every step; actions uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        s = np.zeros((T + 1, 1), np.float32)
        s[0] = rng.normal()
        a = rng.uniform(-1, 1, (T, 1)).astype(np.float32)
        c = rng.choice([-1.0, 1.0], size=(T, 1))
        for t in range(T):
            s[t + 1] = 0.5 * s[t] + gain * a[t] + gap * c[t]
        eps.append({"states": s, "actions": a})
    return eps


def bimodal_truth(state: np.ndarray, action: np.ndarray, gap: float = 1.0,
                  gain: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The two possible next states ``(low, high)`` of :func:`bimodal_episodes`."""
    centre = 0.5 * state + gain * action
    return centre - gap, centre + gap


def action_response_episodes(n: int = 200, T: int = 10, seed: int = 0, gain: float = 1.0,
                             noise: float = 0.5, dim: int = 2) -> list[dict[str, np.ndarray]]:
    """``dim``-D state and action: ``s' = 0.9 s + gain * a + noise * e``, e ~ N(0, I).
    The true response to an action change ``da`` is ``gain * da``; the noise is what the
    latent has to explain (and what tempts it to explain the action too)."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        s = np.zeros((T + 1, dim), np.float32)
        s[0] = rng.normal(size=dim)
        a = rng.uniform(-1, 1, (T, dim)).astype(np.float32)
        for t in range(T):
            s[t + 1] = 0.9 * s[t] + gain * a[t] + noise * rng.normal(size=dim)
        eps.append({"states": s, "actions": a})
    return eps


def smooth_episodes(n: int = 100, T: int = 20, seed: int = 0, radius: float = 1.0
                    ) -> list[dict[str, np.ndarray]]:
    """2-D state in a disc of ``radius``, 2-D action in [-1, 1]: a nonlinear map
    ``s' = s + 0.1 * (a + sin(3 s))`` kept in the disc (the data support for the
    uncertainty tests)."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        s = np.zeros((T + 1, 2), np.float32)
        r = radius * np.sqrt(rng.uniform())
        th = rng.uniform(0, 2 * np.pi)
        s[0] = [r * np.cos(th), r * np.sin(th)]
        a = rng.uniform(-1, 1, (T, 2)).astype(np.float32)
        for t in range(T):
            nxt = s[t] + 0.1 * (a[t] + np.sin(3 * s[t]))
            norm = np.linalg.norm(nxt)
            if norm > radius:  # stay inside the support
                nxt = nxt * (radius / norm) * 0.98
                a[t] = (nxt - s[t]) / 0.1 - np.sin(3 * s[t])
                a[t] = np.clip(a[t], -1, 1)
                nxt = s[t] + 0.1 * (a[t] + np.sin(3 * s[t]))
            s[t + 1] = nxt
        eps.append({"states": s, "actions": a})
    return eps


def toy_episodes(n: int = 24, T: int = 30, seed: int = 0,
                 images: bool = False) -> list[dict[str, np.ndarray]]:
    """A known 3-D system with 2-D actions: ``x += 0.1 a0, y += 0.1 a1, w += 0.1 sin(x)``;
    costs ``|s'|^2``; with ``images``, random 1x8x8 uint8 frames."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        s = np.zeros((T + 1, 3), np.float32)
        a = rng.uniform(-1, 1, (T, 2)).astype(np.float32)
        s[0] = rng.normal(size=3)
        for t in range(T):
            s[t + 1] = s[t] + 0.1 * np.array([a[t, 0], a[t, 1], np.sin(s[t, 0])])
        ep = {"states": s, "actions": a, "costs": (s[1:] ** 2).sum(1)}
        if images:
            ep["images"] = rng.integers(0, 255, (T + 1, 1, 8, 8), dtype=np.uint8)
        eps.append(ep)
    return eps
