"""Grid search: A*, weighted A* and Dijkstra on an :class:`worldplan.envs.maps.OccupancyGrid`.

Cells are ``(row, col)``; moves are 4- or 8-connected with cost 1 per straight step and
sqrt(2) per diagonal, times the grid's resolution (metres). With ``corner_cutting=False``
(the default) a diagonal step needs both orthogonal neighbours free, so a path never
squeezes between two diagonally touching obstacles; ``True`` gives the plain 8-connected
grid graph (networkx's ``grid_2d_graph`` plus diagonals, pyastar2d).

The search runs in a small C core (:mod:`worldplan.planners.path._native`) when a C compiler is
available, else in pure Python; both return the same optimal cost.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from worldplan.envs.maps import OccupancyGrid, as_occupancy
from worldplan.planners.path import _native

log = logging.getLogger(__name__)

SQRT2 = math.sqrt(2.0)
Backend = Literal["auto", "native", "python"]


class NoPathError(RuntimeError):
    """The goal cannot be reached from the start."""


@dataclass
class Path:
    """A planned path.

    Attributes:
        cells: ``[K, 2]`` int64 (row, col), start first and goal last.
        points: ``[K, 2]`` float64 cell centres (x, y) in metres.
        cost: path length in metres (1 per straight step, sqrt(2) per diagonal, x resolution).
        expanded: cells the search closed (a measure of effort).
    """

    cells: np.ndarray
    points: np.ndarray
    cost: float
    expanded: int = 0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cells)


def _check_cell(name: str, cell, grid: OccupancyGrid) -> tuple[int, int]:
    arr = np.asarray(cell)
    if arr.shape != (2,) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a (row, col) pair of integers, got {cell!r}")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise ValueError(f"{name} must be a (row, col) pair of integers, got {cell!r}")
    r, c = int(arr[0]), int(arr[1])
    h, w = grid.shape
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"{name} {(r, c)} is outside the {h} x {w} grid")
    if grid.occupied[r, c]:
        raise ValueError(f"{name} {(r, c)} is inside an obstacle")
    return r, c


def _check_options(connectivity: int, weight: float) -> None:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")


def _search_python(
    occ: np.ndarray,
    start: int,
    goal: int,
    connectivity: int,
    weight: float,
    corner_cutting: bool,
) -> tuple[bool, np.ndarray, np.ndarray, int]:
    """Pure-Python twin of the C core: returns (found, g [H*W], parent [H*W], expanded)."""
    h, w = occ.shape
    flat = occ.ravel().tolist()
    n = h * w
    g = [math.inf] * n
    parent = [-1] * n
    closed = bytearray(n)
    moves = [(-1, 0, 1.0), (1, 0, 1.0), (0, -1, 1.0), (0, 1, 1.0)]
    if connectivity == 8:
        moves += [(-1, -1, SQRT2), (-1, 1, SQRT2), (1, -1, SQRT2), (1, 1, SQRT2)]
    gr, gc = divmod(goal, w) if goal >= 0 else (0, 0)
    use_h = goal >= 0 and weight > 0
    oct_k = SQRT2 - 2.0

    def heuristic(r: int, c: int) -> float:
        if not use_h:
            return 0.0
        dr, dc = abs(r - gr), abs(c - gc)
        base = dr + dc + oct_k * min(dr, dc) if connectivity == 8 else dr + dc
        return weight * base

    g[start] = 0.0
    sr, sc = divmod(start, w)
    heap = [(heuristic(sr, sc), -0.0, start)]
    found = goal < 0
    expanded = 0
    while heap:
        _, neg_g, u = heapq.heappop(heap)
        gu = -neg_g
        if closed[u] or gu > g[u]:
            continue
        closed[u] = 1
        expanded += 1
        if u == goal:
            found = True
            break
        r, c = divmod(u, w)
        for dr, dc, step in moves:
            rr, cc = r + dr, c + dc
            if rr < 0 or rr >= h or cc < 0 or cc >= w:
                continue
            v = rr * w + cc
            if flat[v] or closed[v]:
                continue
            if dr and dc and not corner_cutting and (flat[r * w + cc] or flat[rr * w + c]):
                continue
            ng = gu + step
            if ng < g[v]:
                g[v] = ng
                parent[v] = u
                heapq.heappush(heap, (ng + heuristic(rr, cc), -ng, v))
    return found, np.asarray(g), np.asarray(parent, dtype=np.int32), expanded


def _search(
    occ: np.ndarray,
    start: int,
    goal: int,
    connectivity: int,
    weight: float,
    corner_cutting: bool,
    backend: Backend,
) -> tuple[bool, np.ndarray, np.ndarray, int]:
    if backend not in ("auto", "native", "python"):
        raise ValueError(f"backend must be 'auto', 'native' or 'python', got {backend!r}")
    lib = _native.load() if backend != "python" else None
    if lib is None:
        if backend == "native":
            raise RuntimeError("the native A* core is unavailable (no C compiler?)")
        return _search_python(occ, start, goal, connectivity, weight, corner_cutting)
    h, w = occ.shape
    occ_u8 = np.ascontiguousarray(occ).view(np.uint8)
    g = np.empty(h * w, dtype=np.float64)
    parent = np.empty(h * w, dtype=np.int32)
    expanded = ctypes.c_int64(0)
    status = lib.wp_astar(
        occ_u8.ctypes.data,
        h,
        w,
        start,
        goal,
        connectivity,
        float(weight),
        int(bool(corner_cutting)),
        g.ctypes.data,
        parent.ctypes.data,
        ctypes.byref(expanded),
    )
    if status < 0:
        raise MemoryError("the native A* core ran out of memory")
    return bool(status), g, parent, int(expanded.value)


def _trace(parent: np.ndarray, start: int, goal: int) -> np.ndarray:
    """Cell indices ``[K]`` start ... goal along ``parent`` (in C when available)."""
    lib = _native.load()
    if lib is not None and parent.dtype == np.int32 and parent.flags.c_contiguous:
        out = np.empty(parent.size, dtype=np.int32)
        k = lib.wp_trace(parent.ctypes.data, start, goal, out.ctypes.data, out.size)
        if k > 0:
            return out[:k][::-1].astype(np.int64)
    chain = [goal]
    node = goal
    while node != start:
        node = int(parent[node])
        chain.append(node)
    return np.asarray(chain[::-1], dtype=np.int64)


def astar(
    grid: OccupancyGrid | np.ndarray,
    start: tuple[int, int],
    goal: tuple[int, int],
    connectivity: int = 8,
    weight: float = 1.0,
    corner_cutting: bool = False,
    backend: Backend = "auto",
) -> Path:
    """Shortest grid path from ``start`` to ``goal`` (both ``(row, col)``).

    Args:
        grid: an :class:`OccupancyGrid` or a 2-D boolean array (``True`` = occupied;
            resolution 1).
        connectivity: 4 or 8.
        weight: heuristic weight: 1 is optimal A* (octile / Manhattan heuristic), > 1 is
            weighted A* (cost at most ``weight`` x optimal, usually far fewer expansions),
            0 is Dijkstra.
        corner_cutting: allow a diagonal step past an occupied orthogonal neighbour.
        backend: ``auto`` (C core when available), ``native`` or ``python``.

    Raises:
        NoPathError: when the goal is unreachable.
        ValueError / TypeError: bad grid, cells outside the grid or inside an obstacle,
            bad options.
    """
    g_map = as_occupancy(grid)
    _check_options(connectivity, weight)
    sr, sc = _check_cell("start", start, g_map)
    gr, gc = _check_cell("goal", goal, g_map)
    h, w = g_map.shape
    s_idx, g_idx = sr * w + sc, gr * w + gc
    found, g, parent, expanded = _search(
        g_map.occupied, s_idx, g_idx, connectivity, weight, corner_cutting, backend
    )
    if not found:
        raise NoPathError(f"no path from {(sr, sc)} to {(gr, gc)} ({expanded} cells searched)")
    idx = _trace(parent, s_idx, g_idx)
    cells = np.stack([idx // w, idx % w], axis=1)
    return Path(
        cells=cells,
        points=g_map.cell_to_world(cells),
        cost=float(g[g_idx]) * g_map.resolution,
        expanded=expanded,
    )


def dijkstra(
    grid: OccupancyGrid | np.ndarray,
    start: tuple[int, int],
    goal: tuple[int, int],
    connectivity: int = 8,
    corner_cutting: bool = False,
    backend: Backend = "auto",
) -> Path:
    """:func:`astar` with ``weight=0`` (uniform-cost search)."""
    return astar(grid, start, goal, connectivity, 0.0, corner_cutting, backend)


def distance_field(
    grid: OccupancyGrid | np.ndarray,
    source: tuple[int, int],
    connectivity: int = 8,
    corner_cutting: bool = False,
    backend: Backend = "auto",
) -> np.ndarray:
    """Shortest-path distance in metres from ``source`` to every cell: ``[H, W]`` float64,
    ``inf`` for unreachable or occupied cells (the obstacle-aware heuristic of hybrid A*)."""
    g_map = as_occupancy(grid)
    _check_options(connectivity, 0.0)
    sr, sc = _check_cell("source", source, g_map)
    h, w = g_map.shape
    _, g, _, _ = _search(
        g_map.occupied, sr * w + sc, -1, connectivity, 0.0, corner_cutting, backend
    )
    return g.reshape(h, w) * g_map.resolution


def path_is_valid(grid: OccupancyGrid | np.ndarray, cells: np.ndarray, corner_cutting: bool = False,
                  connectivity: int = 8) -> bool:
    """Whether ``cells`` ``[K, 2]`` is a connected, collision-free grid path under the rules."""
    g_map = as_occupancy(grid)
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] != 2 or len(cells) == 0:
        return False
    if not g_map.in_bounds(cells).all() or g_map.occupied[cells[:, 0], cells[:, 1]].any():
        return False
    steps = np.diff(cells, axis=0)
    if (np.abs(steps) > 1).any() or (np.abs(steps).sum(axis=1) == 0).any():
        return False
    diagonal = np.abs(steps).sum(axis=1) == 2
    if connectivity == 4 and diagonal.any():
        return False
    if not corner_cutting and diagonal.any():
        a = cells[:-1][diagonal]
        d = steps[diagonal]
        side1 = g_map.occupied[a[:, 0] + d[:, 0], a[:, 1]]
        side2 = g_map.occupied[a[:, 0], a[:, 1] + d[:, 1]]
        if (side1 | side2).any():
            return False
    return True
