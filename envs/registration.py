"""Registers every worldplan environment with gymnasium as ``worldplan/<Name>-v0``."""

from __future__ import annotations

import gymnasium as gym

# id -> (entry point, default kwargs). Entry points are strings so that importing
# ``envs`` stays cheap and a task's heavy imports happen only when it is made.
ENVIRONMENTS: dict[str, tuple[str, dict]] = {
    "worldplan/TruckBackerUpper-v0": ("worldplan.envs.truck.env:TruckBackerUpperEnv", {}),
    "worldplan/DenseTraffic-v0": ("worldplan.envs.highway.env:DenseTrafficEnv", {}),
    "worldplan/Navigation2D-v0": ("worldplan.envs.navigation.env:Navigation2DEnv", {}),
}


def register_all() -> None:
    """Register the suite's environments (idempotent)."""
    for env_id, (entry_point, kwargs) in ENVIRONMENTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)
