"""2-D navigation: a MuJoCo point-mass robot on an occupancy-grid map with landmark ranging."""

from worldplan.envs.navigation.env import MapConfig, Navigation2DEnv, mjcf_from_grid
from worldplan.envs.navigation.task_model import NavigationParams, NavigationTaskModel
from worldplan.envs.registration import register_env

register_env("worldplan/Navigation2D-v0", "worldplan.envs.navigation.env:Navigation2DEnv")

__all__ = [
    "MapConfig",
    "Navigation2DEnv",
    "NavigationParams",
    "NavigationTaskModel",
    "mjcf_from_grid",
]
