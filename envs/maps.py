"""Occupancy grids: the map every path planner and the navigation task share.

A grid is a boolean array ``[H, W]`` with ``True`` = occupied. Cell ``(row, col)`` covers
the square ``[ox + col * r, ox + (col + 1) * r] x [oy + row * r, oy + (row + 1) * r]`` in
metres, where ``r`` is the resolution (metres per cell) and ``(ox, oy)`` the origin: rows
grow along +y, columns along +x. World points are ``(x, y)`` pairs; cells are
``(row, col)`` pairs. Everything outside the grid counts as occupied.

Length: one class, the occupancy grid, with its conversions (world <-> cells, images,
inflation, distance maps); splitting it would scatter the frame conventions above.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from worldplan.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)

ArrayLike = Any  # numpy array, torch tensor or nested sequence


def _as_points(name: str, points: ArrayLike) -> tuple[np.ndarray, bool, Any]:
    """``[N, 2]`` float64 numpy view of ``points``; also whether it was torch and its device."""
    is_torch = isinstance(points, torch.Tensor)
    device = points.device if is_torch else None
    arr = points.detach().cpu().double().numpy() if is_torch else np.asarray(points, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2] (x, y in metres), got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr, is_torch, device


def _out(mask: np.ndarray, is_torch: bool, device: Any) -> np.ndarray | torch.Tensor:
    return torch.from_numpy(mask).to(device) if is_torch else mask


class OccupancyGrid:
    """A 2-D occupancy grid in metres.

    Args:
        occupied: ``[H, W]`` boolean array, ``True`` = occupied.
        resolution: metres per cell, > 0.
        origin: world ``(x, y)`` of the grid's lower-left corner (cell (0, 0)'s corner).
    """

    def __init__(
        self,
        occupied: np.ndarray,
        resolution: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> None:
        if isinstance(occupied, torch.Tensor):
            occupied = occupied.detach().cpu().numpy()
        occupied = np.asarray(occupied)
        if occupied.dtype != np.bool_:
            raise TypeError(f"occupied must be a boolean array, got dtype {occupied.dtype}")
        if occupied.ndim != 2 or occupied.shape[0] < 1 or occupied.shape[1] < 1:
            raise ValueError(f"occupied must be a non-empty 2-D array, got shape {occupied.shape}")
        try:
            resolution = float(resolution)
        except (TypeError, ValueError):
            raise TypeError(f"resolution must be a number, got {resolution!r}") from None
        if not math.isfinite(resolution) or resolution <= 0:
            raise ValueError(f"resolution must be a positive number of metres, got {resolution}")
        origin_arr = np.asarray(origin, dtype=float)
        if origin_arr.shape != (2,) or not np.isfinite(origin_arr).all():
            raise ValueError(f"origin must be a finite (x, y) pair, got {origin!r}")
        self.occupied: np.ndarray = np.ascontiguousarray(occupied)
        self.resolution: float = resolution
        self.origin: np.ndarray = origin_arr

    # -- basic properties --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in cells."""
        return self.occupied.shape  # type: ignore[return-value]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` in metres."""
        h, w = self.shape
        ox, oy = self.origin
        return (ox, ox + w * self.resolution, oy, oy + h * self.resolution)

    @property
    def free(self) -> np.ndarray:
        """``[H, W]`` boolean, ``True`` = free."""
        return ~self.occupied

    def __repr__(self) -> str:
        return (
            f"OccupancyGrid(shape={self.shape}, resolution={self.resolution}, "
            f"origin=({self.origin[0]:g}, {self.origin[1]:g}), "
            f"occupied={self.occupied.mean():.1%})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OccupancyGrid):
            return NotImplemented
        return (
            self.resolution == other.resolution
            and np.array_equal(self.origin, other.origin)
            and np.array_equal(self.occupied, other.occupied)
        )

    # -- conversions -------------------------------------------------------------------
    def cell_to_world(self, cells: ArrayLike) -> np.ndarray:
        """Cell centres: ``[N, 2]`` (row, col) -> ``[N, 2]`` (x, y) metres (also ``[2]``)."""
        c = np.asarray(cells, dtype=float)
        single = c.ndim == 1
        c = np.atleast_2d(c)
        if c.shape[-1] != 2:
            raise ValueError(f"cells must have shape [N, 2] (row, col), got {list(c.shape)}")
        xy = np.stack(
            [
                self.origin[0] + (c[:, 1] + 0.5) * self.resolution,
                self.origin[1] + (c[:, 0] + 0.5) * self.resolution,
            ],
            axis=1,
        )
        return xy[0] if single else xy

    def world_to_cell(self, points: ArrayLike) -> np.ndarray:
        """``[N, 2]`` (x, y) metres -> ``[N, 2]`` int (row, col) holding them (may be outside)."""
        p = np.asarray(points, dtype=float)
        single = p.ndim == 1
        p = np.atleast_2d(p)
        if p.shape[-1] != 2:
            raise ValueError(f"points must have shape [N, 2] (x, y), got {list(p.shape)}")
        col = np.floor((p[:, 0] - self.origin[0]) / self.resolution).astype(np.int64)
        row = np.floor((p[:, 1] - self.origin[1]) / self.resolution).astype(np.int64)
        rc = np.stack([row, col], axis=1)
        return rc[0] if single else rc

    def in_bounds(self, cells: ArrayLike) -> np.ndarray:
        """``[N, 2]`` (row, col) -> ``[N]`` bool: inside the grid."""
        c = np.atleast_2d(np.asarray(cells))
        h, w = self.shape
        return (c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)

    # -- collision checks ----------------------------------------------------------------
    def is_free(self, points: ArrayLike) -> np.ndarray | torch.Tensor:
        """``[N, 2]`` (x, y) metres -> ``[N]`` bool; outside the grid is not free.

        Takes numpy or torch and answers in kind (a torch answer on the input's device).
        """
        arr, is_torch, device = _as_points("points", points)
        return _out(self._free_np(arr), is_torch, device)

    def _free_np(self, arr: np.ndarray) -> np.ndarray:
        h, w = self.shape
        col = np.floor((arr[:, 0] - self.origin[0]) / self.resolution)
        row = np.floor((arr[:, 1] - self.origin[1]) / self.resolution)
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        free = np.zeros(arr.shape[0], dtype=bool)
        r, c = row[inside].astype(np.int64), col[inside].astype(np.int64)
        free[inside] = ~self.occupied[r, c]
        return free

    def segment_free(
        self, a: ArrayLike, b: ArrayLike, step: float | None = None
    ) -> np.ndarray | torch.Tensor:
        """``[N, 2], [N, 2]`` (x, y) metres -> ``[N]`` bool: the segments ``a_i b_i`` are free.

        Each segment is sampled every ``step`` metres (default a quarter of a cell) plus
        both ends, so a segment may graze a corner by less than ``step`` unnoticed; inflate
        the grid by the robot radius (:meth:`inflate`) for a safety margin.
        """
        pa, is_torch, device = _as_points("a", a)
        pb, _, _ = _as_points("b", b)
        if pa.shape != pb.shape:
            raise ValueError(f"a and b must have the same shape, got {pa.shape} and {pb.shape}")
        step = self.resolution / 4 if step is None else float(step)
        if not step > 0:
            raise ValueError(f"step must be positive, got {step}")
        n = pa.shape[0]
        result = np.ones(n, dtype=bool)
        if n == 0:
            return _out(result, is_torch, device)
        lengths = np.linalg.norm(pb - pa, axis=1)
        counts = np.ceil(lengths / step).astype(np.int64) + 1  # samples per segment (>= 2 w/ ends)
        counts = np.maximum(counts, 2)
        # Process in chunks of about a million samples to bound memory.
        ends = np.cumsum(counts)
        bounds = [0]
        while bounds[-1] < n:
            base = ends[bounds[-1] - 1] if bounds[-1] > 0 else 0
            stop = int(np.searchsorted(ends, base + 1_000_000, side="right"))
            bounds.append(max(stop, bounds[-1] + 1))
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            c = counts[start:stop]
            total = int(c.sum())
            seg = np.repeat(np.arange(start, stop), c)
            offsets = np.cumsum(c) - c
            k = np.arange(total) - np.repeat(offsets, c)
            t = k / np.repeat(c - 1, c)
            pts = pa[seg] + t[:, None] * (pb[seg] - pa[seg])
            ok = self._free_np(pts)
            result[start:stop] = np.logical_and.reduceat(ok, offsets)
        return _out(result, is_torch, device)

    # -- transforms --------------------------------------------------------------------
    def inflate(self, radius_m: float) -> OccupancyGrid:
        """A new grid where every cell whose centre lies within ``radius_m`` metres of an
        occupied cell's centre is occupied (the configuration space of a disc robot)."""
        radius_m = float(radius_m)
        if not math.isfinite(radius_m) or radius_m < 0:
            raise ValueError(f"radius_m must be a non-negative number of metres, got {radius_m}")
        if radius_m == 0 or not self.occupied.any():
            return OccupancyGrid(self.occupied.copy(), self.resolution, self.origin)
        from scipy.ndimage import distance_transform_edt

        distance = distance_transform_edt(~self.occupied) * self.resolution
        return OccupancyGrid(distance <= radius_m + 1e-12, self.resolution, self.origin)

    def upsample(self, factor: int) -> OccupancyGrid:
        """The same map at ``factor`` times finer resolution (each cell split into
        ``factor x factor``), e.g. before :meth:`inflate` by less than a cell."""
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        f = int(factor)
        occ = self.occupied.repeat(f, axis=0).repeat(f, axis=1)
        return OccupancyGrid(occ, self.resolution / f, self.origin)

    def sample_free(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` free cells ``[n, 2]`` (row, col), drawn uniformly (with replacement)."""
        free = np.argwhere(~self.occupied)
        if len(free) == 0:
            raise ValueError("the grid has no free cell to sample")
        return free[rng.integers(0, len(free), size=n)]

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_array(
        cls, array: ArrayLike, resolution: float = 1.0, origin: Sequence[float] = (0.0, 0.0)
    ) -> OccupancyGrid:
        """From a boolean ``[H, W]`` array (``True`` = occupied); alias of the constructor."""
        return cls(np.asarray(array), resolution, origin)

    @classmethod
    def from_image(
        cls,
        path: str | os.PathLike,
        resolution: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0),
        threshold: int = 128,
        occupied_dark: bool = True,
    ) -> OccupancyGrid:
        """From an image file (any format OpenCV reads), ROS-map style.

        Pixels darker than ``threshold`` (0..255 grey) are occupied when ``occupied_dark``
        (else the bright ones). The image's top row becomes the grid's top (largest y).
        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one OpenCV
        cannot decode.
        """
        import cv2

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"map image not found: {path}")
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
        if image is None:
            raise ValueError(f"map image {path} is corrupt or not an image OpenCV can read")
        occupied = image < threshold if occupied_dark else image >= threshold
        return cls(np.flipud(occupied).copy(), resolution, origin)

    def to_image(self, path: str | os.PathLike) -> None:
        """Write the grid as a PNG (black = occupied), the inverse of :meth:`from_image`."""
        import cv2

        image = np.where(np.flipud(self.occupied), 0, 255).astype(np.uint8)
        ok, buffer = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover - OpenCV failure
            raise ValueError(f"OpenCV could not encode the grid for {path}")
        atomic_write_bytes(path, buffer.tobytes())

    @classmethod
    def random(
        cls,
        shape: tuple[int, int],
        density: float = 0.2,
        seed: int | np.random.Generator = 0,
        resolution: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> OccupancyGrid:
        """Each cell occupied independently with probability ``density``."""
        h, w = _check_shape(shape)
        if not 0 <= density <= 1:
            raise ValueError(f"density must lie in [0, 1], got {density}")
        rng = np.random.default_rng(seed)
        return cls(rng.random((h, w)) < density, resolution, origin)

    @classmethod
    def maze(
        cls,
        shape: tuple[int, int],
        seed: int | np.random.Generator = 0,
        resolution: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> OccupancyGrid:
        """A perfect maze (one path between any two corridor cells), one-cell corridors and
        walls, carved by a randomised depth-first search; cell (0, 0) and the far corner
        ``(H-1 or H-2, W-1 or W-2)`` are corridor cells. ``shape`` is at least 3 x 3."""
        h, w = _check_shape(shape)
        if h < 3 or w < 3:
            raise ValueError(f"shape must be at least 3 x 3 for a maze, got {shape}")
        import random as _random

        rng = np.random.default_rng(seed)
        # A Python generator seeded from the numpy one: list operations are much faster here.
        pick = _random.Random(int(rng.integers(2**63))).randrange
        occ = np.ones((h, w), dtype=bool)
        nr, nc = (h + 1) // 2, (w + 1) // 2  # corridor nodes at even (row, col)
        visited = bytearray(nr * nc)
        carved: list[int] = [0]  # flat indices (in the full grid) of corridor cells
        stack = [0]
        visited[0] = 1
        while stack:
            node = stack[-1]
            r, c = divmod(node, nc)
            options = []
            if r > 0 and not visited[node - nc]:
                options.append((node - nc, -1, 0))
            if r < nr - 1 and not visited[node + nc]:
                options.append((node + nc, 1, 0))
            if c > 0 and not visited[node - 1]:
                options.append((node - 1, 0, -1))
            if c < nc - 1 and not visited[node + 1]:
                options.append((node + 1, 0, 1))
            if not options:
                stack.pop()
                continue
            nxt, dr, dc = options[pick(len(options))]
            visited[nxt] = 1
            rr, cc = divmod(nxt, nc)
            carved.append((2 * rr) * w + 2 * cc)
            carved.append((2 * r + dr) * w + 2 * c + dc)  # the wall in between
            stack.append(nxt)
        occ.reshape(-1)[np.asarray(carved)] = False
        return cls(occ, resolution, origin)

    @classmethod
    def rooms(
        cls,
        shape: tuple[int, int],
        seed: int | np.random.Generator = 0,
        room_size: int = 10,
        door_width: int = 2,
        resolution: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> OccupancyGrid:
        """A building: an outer wall, a lattice of roughly ``room_size`` rooms separated by
        one-cell walls, and one door of ``door_width`` cells in every interior wall segment
        (so every room is reachable), placed at random."""
        h, w = _check_shape(shape)
        if room_size < door_width + 2 or door_width < 1:
            raise ValueError(
                f"room_size ({room_size}) must exceed door_width ({door_width}) + 1 >= 2"
            )
        rng = np.random.default_rng(seed)
        occ = np.zeros((h, w), dtype=bool)
        occ[0, :] = occ[-1, :] = occ[:, 0] = occ[:, -1] = True
        rows = list(range(room_size + 1, h - 2, room_size + 1))
        cols = list(range(room_size + 1, w - 2, room_size + 1))
        row_edges = [0, *rows, h - 1]
        col_edges = [0, *cols, w - 1]
        for r in rows:
            occ[r, :] = True
        for c in cols:
            occ[:, c] = True
        # A door in every wall segment between two adjacent rooms.
        for r in rows:
            for c0, c1 in zip(col_edges[:-1], col_edges[1:], strict=True):
                span = c1 - c0 - 1
                width = min(door_width, span)
                if width < 1:
                    continue
                start = c0 + 1 + int(rng.integers(0, span - width + 1))
                occ[r, start : start + width] = False
        for c in cols:
            for r0, r1 in zip(row_edges[:-1], row_edges[1:], strict=True):
                span = r1 - r0 - 1
                width = min(door_width, span)
                if width < 1:
                    continue
                start = r0 + 1 + int(rng.integers(0, span - width + 1))
                occ[start : start + width, c] = False
        return cls(occ, resolution, origin)


    @classmethod
    def boxes(
        cls,
        shape: tuple[int, int],
        n_boxes: int = 8,
        max_size: int = 4,
        seed: int | np.random.Generator = 0,
        border: bool = True,
        resolution: float = 1.0,
        origin: Sequence[float] = (0.0, 0.0),
    ) -> OccupancyGrid:
        """``n_boxes`` axis-aligned rectangles of 1..``max_size`` cells a side at random
        places, inside a one-cell outer wall when ``border``."""
        h, w = _check_shape(shape)
        if n_boxes < 0 or max_size < 1:
            raise ValueError(f"n_boxes must be >= 0 and max_size >= 1, got {n_boxes}, {max_size}")
        rng = np.random.default_rng(seed)
        occ = np.zeros((h, w), dtype=bool)
        for _ in range(int(n_boxes)):
            bh, bw = rng.integers(1, max_size + 1, size=2)
            r0 = int(rng.integers(0, max(h - bh, 0) + 1))
            c0 = int(rng.integers(0, max(w - bw, 0) + 1))
            occ[r0 : r0 + bh, c0 : c0 + bw] = True
        if border:
            occ[0, :] = occ[-1, :] = occ[:, 0] = occ[:, -1] = True
        return cls(occ, resolution, origin)

def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be two positive integers (H, W), got {shape!r}")
    return int(shape[0]), int(shape[1])


def as_occupancy(grid: OccupancyGrid | np.ndarray, name: str = "grid") -> OccupancyGrid:
    """An :class:`OccupancyGrid` from itself or a 2-D boolean array (resolution 1 m)."""
    if isinstance(grid, OccupancyGrid):
        return grid
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu().numpy()
    arr = np.asarray(grid)
    if arr.dtype != np.bool_ or arr.ndim != 2:
        raise TypeError(
            f"{name} must be an OccupancyGrid or a 2-D boolean array, "
            f"got {arr.ndim}-D {arr.dtype}"
        )
    return OccupancyGrid(arr)
