"""Grid A*: optimality against Dijkstra (scipy) and networkx, path validity, bad input."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra as csgraph_dijkstra

from worldplan.envs.maps import OccupancyGrid
from worldplan.planners.path import (
    NoPathError,
    _native,
    astar,
    dijkstra,
    distance_field,
    path_is_valid,
)


def _moves(connectivity: int):
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        moves += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    return moves


def _edges(occ: np.ndarray, connectivity: int, corner_cutting: bool):
    """Every directed edge (u, v, cost) of the grid graph under the same rules as astar."""
    h, w = occ.shape
    for r in range(h):
        for c in range(w):
            if occ[r, c]:
                continue
            for dr, dc in _moves(connectivity):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < h and 0 <= cc < w) or occ[rr, cc]:
                    continue
                if dr and dc and not corner_cutting and (occ[r, cc] or occ[rr, c]):
                    continue
                yield (r, c), (rr, cc), math.sqrt(2) if dr and dc else 1.0


def _networkx_cost(occ, start, goal, connectivity, corner_cutting) -> float:
    graph = nx.Graph()
    graph.add_nodes_from([start, goal])
    for u, v, cost in _edges(occ, connectivity, corner_cutting):
        graph.add_edge(u, v, weight=cost)
    try:
        return nx.shortest_path_length(graph, start, goal, weight="weight")
    except nx.NetworkXNoPath:
        return math.inf


def _scipy_cost(occ, start, goal, connectivity, corner_cutting) -> float:
    h, w = occ.shape
    rows, cols, data = [], [], []
    for u, v, cost in _edges(occ, connectivity, corner_cutting):
        rows.append(u[0] * w + u[1])
        cols.append(v[0] * w + v[1])
        data.append(cost)
    graph = coo_matrix((data, (rows, cols)), shape=(h * w, h * w)).tocsr()
    dist = csgraph_dijkstra(graph, directed=True, indices=start[0] * w + start[1])
    return float(dist[goal[0] * w + goal[1]])


@st.composite
def grid_problems(draw):
    h = draw(st.integers(2, 12))
    w = draw(st.integers(2, 12))
    density = draw(st.sampled_from([0.0, 0.1, 0.25, 0.4]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    occ = rng.random((h, w)) < density
    start = (int(rng.integers(h)), int(rng.integers(w)))
    goal = (int(rng.integers(h)), int(rng.integers(w)))
    occ[start] = occ[goal] = False
    connectivity = draw(st.sampled_from([4, 8]))
    corner_cutting = draw(st.booleans())
    return occ, start, goal, connectivity, corner_cutting


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_problems())
def test_astar_cost_matches_dijkstra_and_networkx(problem) -> None:
    occ, start, goal, connectivity, corner_cutting = problem
    expected = _networkx_cost(occ, start, goal, connectivity, corner_cutting)
    assert _scipy_cost(occ, start, goal, connectivity, corner_cutting) == pytest.approx(expected)
    for weight in (1.0, 0.0):
        for backend in ("auto", "python"):
            if math.isinf(expected):
                with pytest.raises(NoPathError):
                    astar(occ, start, goal, connectivity, weight, corner_cutting, backend)
                continue
            path = astar(occ, start, goal, connectivity, weight, corner_cutting, backend)
            assert path.cost == pytest.approx(expected, abs=1e-9)
            assert tuple(path.cells[0]) == start and tuple(path.cells[-1]) == goal
            assert path_is_valid(occ, path.cells, corner_cutting, connectivity)
            steps = np.abs(np.diff(path.cells, axis=0)).sum(axis=1)
            assert path.cost == pytest.approx(
                np.where(steps == 2, math.sqrt(2), 1.0).sum(), abs=1e-9
            )
    if not math.isinf(expected):
        # Weighted A* is bounded-suboptimal and still a valid path.
        path = astar(occ, start, goal, connectivity, 3.0, corner_cutting)
        assert expected - 1e-9 <= path.cost <= 3.0 * expected + 1e-9
        assert path_is_valid(occ, path.cells, corner_cutting, connectivity)


def test_native_core_builds_where_a_compiler_exists() -> None:
    # The fallback is tested above with backend="python".
    import os
    import shutil

    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the pure-Python fallback is in use")
    if os.environ.get("WORLDPLAN_NO_NATIVE"):
        pytest.skip("WORLDPLAN_NO_NATIVE is set")
    assert _native.load() is not None


def test_cost_scales_with_resolution_and_points_are_metres() -> None:
    occ = np.zeros((5, 8), dtype=bool)
    grid = OccupancyGrid(occ, resolution=0.5, origin=(1.0, -2.0))
    path = astar(grid, (0, 0), (4, 7))
    assert path.cost == pytest.approx(0.5 * (4 * math.sqrt(2) + 3))
    np.testing.assert_allclose(path.points[0], [1.25, -1.75])
    np.testing.assert_allclose(path.points[-1], [1.0 + 7.5 * 0.5, -2.0 + 4.5 * 0.5])


def test_corner_cutting_rule() -> None:
    occ = np.array([[False, True], [True, False]])
    with pytest.raises(NoPathError):
        astar(occ, (0, 0), (1, 1))
    assert astar(occ, (0, 0), (1, 1), corner_cutting=True).cost == pytest.approx(math.sqrt(2))
    with pytest.raises(NoPathError):
        astar(occ, (0, 0), (1, 1), connectivity=4, corner_cutting=True)


def test_maze_dijkstra_equals_astar_and_distance_field() -> None:
    grid = OccupancyGrid.maze((41, 41), seed=3)
    a = astar(grid, (0, 0), (40, 40))
    d = dijkstra(grid, (0, 0), (40, 40))
    field = distance_field(grid, (40, 40))
    assert a.cost == pytest.approx(d.cost)
    assert field[0, 0] == pytest.approx(a.cost)
    assert np.isinf(field[grid.occupied]).all()
    assert d.expanded >= a.expanded


@pytest.mark.parametrize(
    "start, goal, match",
    [
        ((-1, 0), (3, 3), "start"),
        ((0, 0), (3, 9), "goal"),
        ((2, 2), (3, 3), "start .* obstacle"),
        ((0, 0), (1, 1), "goal .* obstacle"),
        ((0.5, 0), (3, 3), "start"),
        ((0, 0, 0), (3, 3), "start"),
    ],
)
def test_bad_cells(start, goal, match) -> None:
    occ = np.zeros((5, 5), dtype=bool)
    occ[2, 2] = occ[1, 1] = True
    with pytest.raises(ValueError, match=match):
        astar(occ, start, goal)


def test_bad_grid_and_options() -> None:
    with pytest.raises(TypeError, match="grid"):
        astar(np.zeros((4, 4), dtype=int), (0, 0), (3, 3))
    with pytest.raises(TypeError, match="grid"):
        astar(np.zeros((4, 4, 2), dtype=bool), (0, 0), (3, 3))
    occ = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="connectivity"):
        astar(occ, (0, 0), (3, 3), connectivity=6)
    with pytest.raises(ValueError, match="weight"):
        astar(occ, (0, 0), (3, 3), weight=-1.0)
    with pytest.raises(ValueError, match="weight"):
        astar(occ, (0, 0), (3, 3), weight=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        astar(occ, (0, 0), (3, 3), backend="gpu")


def test_start_equals_goal() -> None:
    path = astar(np.zeros((3, 3), dtype=bool), (1, 1), (1, 1))
    assert path.cost == 0.0 and path.cells.tolist() == [[1, 1]]
