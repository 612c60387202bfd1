"""Registers the suite's environments with gymnasium as ``worldplan/<Name>-v0``.

Each task package in ``envs/`` registers its own environments when it is imported, with
:func:`register_env`; :func:`register_all` (run by ``import worldplan.envs``) imports every
task package it finds in the folder, so a new task edits no list here.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import gymnasium as gym

# id -> (entry point, default kwargs), as registered. Entry points are strings so that a
# task's heavy imports (its simulator, MuJoCo) happen only when it is made.
ENVIRONMENTS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_env(env_id: str, entry_point: str, kwargs: dict[str, Any] | None = None) -> None:
    """Register ``env_id`` (``"namespace/Name-vN"``) with gymnasium, made by
    ``entry_point`` (``"package.module:Class"``) with default ``kwargs``. Registering the
    same id again with the same entry point is a no-op; with another one, an error."""
    if not isinstance(entry_point, str) or ":" not in entry_point:
        raise ValueError(f"entry_point must be 'package.module:Class', got {entry_point!r}")
    spec = (entry_point, dict(kwargs or {}))
    if env_id in ENVIRONMENTS and ENVIRONMENTS[env_id] != spec:
        raise ValueError(f"environment {env_id!r} is already registered as "
                         f"{ENVIRONMENTS[env_id][0]}, not {entry_point}")
    ENVIRONMENTS[env_id] = spec
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point, kwargs=spec[1])


def register_all() -> None:
    """Import every task package of ``worldplan.envs`` so that each registers its
    environments (idempotent)."""
    for info in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        if info.ispkg:
            importlib.import_module(f"{__package__}.{info.name}")
