"""Path planning: grid search (A*, weighted A*, Dijkstra) and sampling-based planners
(RRT, RRT*, informed RRT*, PRM*)."""

from planners.path.grid import NoPathError, Path, astar, dijkstra, distance_field, path_is_valid
from planners.path.sampling import (
    SamplingResult,
    Space,
    informed_rrt_star,
    path_length,
    prm,
    rrt,
    rrt_star,
    shortcut,
)

__all__ = [
    "NoPathError",
    "Path",
    "SamplingResult",
    "Space",
    "astar",
    "dijkstra",
    "distance_field",
    "informed_rrt_star",
    "path_is_valid",
    "path_length",
    "prm",
    "rrt",
    "rrt_star",
    "shortcut",
]
