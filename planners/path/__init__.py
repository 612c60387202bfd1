"""Path planning: grid search (A*, weighted A*, Dijkstra), sampling-based planners
(RRT, RRT*, informed RRT*, PRM*) and hybrid A* for car-like kinematics."""

from worldplan.planners.path.grid import (
    NoPathError,
    Path,
    astar,
    dijkstra,
    distance_field,
    path_is_valid,
)
from worldplan.planners.path.hybrid_astar import (
    HybridPath,
    car_primitives,
    car_step,
    grid_heuristic,
    hybrid_astar,
)
from worldplan.planners.path.sampling import (
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
    "HybridPath",
    "NoPathError",
    "Path",
    "SamplingResult",
    "Space",
    "astar",
    "car_primitives",
    "car_step",
    "dijkstra",
    "distance_field",
    "grid_heuristic",
    "hybrid_astar",
    "informed_rrt_star",
    "path_is_valid",
    "path_length",
    "prm",
    "rrt",
    "rrt_star",
    "shortcut",
]
