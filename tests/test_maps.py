"""OccupancyGrid: construction, conversions, collision checks, generators, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldplan.envs.maps import OccupancyGrid
from worldplan.planners.path import astar


def test_conversions_round_trip() -> None:
    grid = OccupancyGrid(np.zeros((4, 6), dtype=bool), resolution=0.25, origin=(-1.0, 2.0))
    cells = np.array([[0, 0], [3, 5], [2, 1]])
    xy = grid.cell_to_world(cells)
    np.testing.assert_allclose(xy[0], [-0.875, 2.125])
    np.testing.assert_array_equal(grid.world_to_cell(xy), cells)
    assert grid.extent == (-1.0, 0.5, 2.0, 3.0)


def test_is_free_numpy_and_torch() -> None:
    occ = np.zeros((3, 3), dtype=bool)
    occ[1, 2] = True  # x in [2, 3), y in [1, 2)
    grid = OccupancyGrid(occ)
    pts = np.array([[0.5, 0.5], [2.5, 1.5], [-0.1, 0.5], [0.5, 3.0], [2.99, 1.01]])
    expected = np.array([True, False, False, False, False])
    np.testing.assert_array_equal(grid.is_free(pts), expected)
    out = grid.is_free(torch.tensor(pts, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    np.testing.assert_array_equal(out.numpy(), expected)


def test_segment_free() -> None:
    occ = np.zeros((10, 10), dtype=bool)
    occ[:8, 5] = True  # a wall with a gap at the top
    grid = OccupancyGrid(occ, resolution=0.1)
    a = np.array([[0.05, 0.05], [0.05, 0.95], [0.05, 0.05], [0.2, 0.2]])
    b = np.array([[0.95, 0.05], [0.95, 0.95], [0.45, 0.75], [0.2, 0.2]])
    np.testing.assert_array_equal(grid.segment_free(a, b), [False, True, True, True])
    # Equivalent to dense sampling on random segments.
    rng = np.random.default_rng(0)
    a = rng.random((200, 2))
    b = rng.random((200, 2))
    t = np.linspace(0, 1, 2001)
    dense = np.array([grid.is_free(a[i] + t[:, None] * (b[i] - a[i])).all() for i in range(200)])
    np.testing.assert_array_equal(grid.segment_free(a, b), dense)
    out = grid.segment_free(torch.tensor(a), torch.tensor(b))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    np.testing.assert_array_equal(out.numpy(), dense)
    with pytest.raises(ValueError, match="same shape"):
        grid.segment_free(a, b[:3])


def test_inflate() -> None:
    occ = np.zeros((11, 11), dtype=bool)
    occ[5, 5] = True
    grid = OccupancyGrid(occ, resolution=0.5)
    inflated = grid.inflate(1.0)  # two cells
    assert inflated.occupied.sum() == 13  # the discrete disc of radius 2 cells
    assert inflated.occupied[5, 3] and not inflated.occupied[5, 2] and not inflated.occupied[4, 3]
    assert grid.inflate(0.0) == grid
    with pytest.raises(ValueError, match="radius_m"):
        grid.inflate(-1.0)


def test_generators_are_seeded_and_solvable() -> None:
    a = OccupancyGrid.random((30, 40), 0.3, seed=5)
    assert a == OccupancyGrid.random((30, 40), 0.3, seed=5)
    assert a != OccupancyGrid.random((30, 40), 0.3, seed=6)
    assert 0.2 < a.occupied.mean() < 0.4
    maze = OccupancyGrid.maze((31, 41), seed=2)
    assert maze == OccupancyGrid.maze((31, 41), seed=2)
    # A perfect maze: corridor cells = nodes + (nodes - 1) edges of a spanning tree.
    nodes = 16 * 21
    assert (~maze.occupied).sum() == 2 * nodes - 1
    assert astar(maze, (0, 0), (30, 40), connectivity=4).cost > 70
    rooms = OccupancyGrid.rooms((40, 50), seed=1, room_size=8)
    free = np.argwhere(rooms.free)
    # Every free cell is reachable from every other (doors in every wall).
    from worldplan.planners.path import distance_field

    field = distance_field(rooms, tuple(free[0]), connectivity=4)
    assert np.isfinite(field[rooms.free]).all()


def test_image_round_trip_and_errors(tmp_path) -> None:
    grid = OccupancyGrid.random((20, 30), 0.3, seed=1)
    path = tmp_path / "map.png"
    grid.to_image(path)
    assert OccupancyGrid.from_image(path) == grid
    with pytest.raises(FileNotFoundError, match="missing.png"):
        OccupancyGrid.from_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="corrupt"):
        OccupancyGrid.from_image(bad)


def test_bad_construction() -> None:
    with pytest.raises(TypeError, match="boolean"):
        OccupancyGrid(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2-D"):
        OccupancyGrid(np.zeros((3,), dtype=bool))
    with pytest.raises(ValueError, match="resolution"):
        OccupancyGrid(np.zeros((3, 3), dtype=bool), resolution=0.0)
    with pytest.raises(ValueError, match="resolution"):
        OccupancyGrid(np.zeros((3, 3), dtype=bool), resolution=-0.5)
    with pytest.raises(ValueError, match="origin"):
        OccupancyGrid(np.zeros((3, 3), dtype=bool), origin=(0.0, np.nan))
    grid = OccupancyGrid(np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="points"):
        grid.is_free(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        grid.is_free(np.full((1, 2), np.nan))
    with pytest.raises(ValueError, match="density"):
        OccupancyGrid.random((3, 3), 1.5)
    with pytest.raises(ValueError, match="shape"):
        OccupancyGrid.maze((2, 10))
