"""Path planning: grid search (A*, weighted A*, Dijkstra) and sampling-based planners."""

from planners.path.grid import NoPathError, Path, astar, dijkstra, distance_field, path_is_valid

__all__ = ["NoPathError", "Path", "astar", "dijkstra", "distance_field", "path_is_valid"]
