"""Sampling-based planners in a box-bounded space: RRT, RRT*, informed RRT*, PRM*.

A :class:`Space` is a box ``[low, high]`` in ``D`` dimensions plus a batched collision
checker: ``is_free(points [N, D]) -> [N] bool`` and optionally ``segment_free(a [N, D],
b [N, D]) -> [N] bool`` (else segments are sampled every ``collision_step``). Ready-made
spaces: :meth:`Space.from_grid` (an :class:`worldplan.envs.maps.OccupancyGrid`) and
:meth:`Space.from_circles` (exact disc obstacles).

Every planner takes a budget in iterations and/or seconds and a seed, and returns a
:class:`SamplingResult` with the best path, its cost, and the best cost over time.
RRT* rewires within the shrinking radius of Karaman & Frazzoli (2011),
``r_n = min(gamma (log n / n)^(1/D), step_size)`` with
``gamma = rewire_factor * 2 (1 + 1/D)^(1/D) (vol(box) / vol(unit ball))^(1/D)``; informed
RRT* (Gammell et al. 2014) samples the prolate hyperspheroid of states that can improve the
current best once a solution exists.

Length: RRT, RRT*, informed RRT* and PRM* share the space, the nearest-neighbour search,
the batched collision checks and the rewiring; each planner is a function of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from worldplan.envs.maps import OccupancyGrid

log = logging.getLogger(__name__)

PointCheck = Callable[[np.ndarray], np.ndarray]
SegmentCheck = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Space:
    """A box-bounded configuration space with a batched collision checker.

    Attributes:
        low, high: ``[D]`` bounds.
        is_free: ``[N, D] -> [N]`` bool.
        segment_free: ``[N, D], [N, D] -> [N]`` bool, or ``None`` to sample every
            ``collision_step`` along each segment with ``is_free``.
        collision_step: sampling step (same units as the space) for the default check.
        exact_segments: ``segment_free`` is exact (not sampled); only then does
            :func:`shortcut` pull paths taut against obstacles (with a sampled check a
            taut path could graze an obstacle between two samples).
    """

    low: np.ndarray
    high: np.ndarray
    is_free: PointCheck
    segment_free: SegmentCheck | None = None
    collision_step: float | None = None
    exact_segments: bool = False

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, dtype=float).reshape(-1)
        self.high = np.asarray(self.high, dtype=float).reshape(-1)
        if self.low.shape != self.high.shape or self.low.size == 0:
            raise ValueError(
                f"low and high must be [D] arrays of one length, got {self.low.shape} and "
                f"{self.high.shape}"
            )
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
            raise ValueError("low and high must be finite")
        if not (self.high > self.low).all():
            raise ValueError(f"high must exceed low in every dimension: {self.low}, {self.high}")
        if not callable(self.is_free):
            raise TypeError("is_free must be callable: points [N, D] -> [N] bool")
        if self.segment_free is not None and not callable(self.segment_free):
            raise TypeError("segment_free must be callable or None")
        if self.collision_step is None:
            self.collision_step = float(np.min(self.high - self.low)) / 200.0
        if not self.collision_step > 0:
            raise ValueError(f"collision_step must be positive, got {self.collision_step}")

    @property
    def dim(self) -> int:
        return int(self.low.size)

    def points_free(self, points: np.ndarray) -> np.ndarray:
        """``[N, D] -> [N]`` bool: inside the box and free."""
        inside = ((points >= self.low) & (points <= self.high)).all(axis=1)
        out = np.zeros(len(points), dtype=bool)
        if inside.any():
            out[inside] = np.asarray(self.is_free(points[inside]), dtype=bool).reshape(-1)
        return out

    def segments_free(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``[N, D], [N, D] -> [N]`` bool: both ends in the box and the segment free."""
        if len(a) == 0:
            return np.zeros(0, dtype=bool)
        if self.segment_free is not None:
            inside = ((a >= self.low) & (a <= self.high) & (b >= self.low)
                      & (b <= self.high)).all(axis=1)
            out = np.zeros(len(a), dtype=bool)
            if inside.any():
                out[inside] = np.asarray(
                    self.segment_free(a[inside], b[inside]), dtype=bool
                ).reshape(-1)
            return out
        lengths = np.linalg.norm(b - a, axis=1)
        counts = np.maximum(np.ceil(lengths / self.collision_step).astype(np.int64) + 1, 2)
        seg = np.repeat(np.arange(len(a)), counts)
        offsets = np.cumsum(counts) - counts
        t = (np.arange(counts.sum()) - np.repeat(offsets, counts)) / np.repeat(counts - 1, counts)
        pts = a[seg] + t[:, None] * (b[seg] - a[seg])
        return np.logical_and.reduceat(self.points_free(pts), offsets)

    # -- ready-made spaces -------------------------------------------------------------
    @classmethod
    def from_grid(cls, grid: OccupancyGrid) -> Space:
        """The plane of an occupancy grid (x, y metres), checked by the grid."""
        x0, x1, y0, y1 = grid.extent
        return cls(
            low=np.array([x0, y0]),
            high=np.array([x1, y1]),
            is_free=grid.is_free,
            segment_free=grid.segment_free,
            collision_step=grid.resolution / 4,
        )

    @classmethod
    def from_circles(
        cls,
        centres: np.ndarray,
        radii: np.ndarray,
        low: np.ndarray | tuple = (0.0, 0.0),
        high: np.ndarray | tuple = (1.0, 1.0),
    ) -> Space:
        """A box with spherical obstacles ``centres [M, D]``, ``radii [M]``, checked exactly."""
        centres = np.asarray(centres, dtype=float)
        radii = np.asarray(radii, dtype=float).reshape(-1)
        if centres.ndim != 2 or centres.shape[0] != radii.shape[0]:
            raise ValueError(
                f"centres must be [M, D] and radii [M], got {centres.shape} and {radii.shape}"
            )
        r2 = radii**2

        def is_free(points: np.ndarray) -> np.ndarray:
            diff = points[:, None, :] - centres[None]
            return (np.einsum("nmd,nmd->nm", diff, diff) > r2).all(axis=1)

        def segment_free(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            ab = b - a  # [N, D]
            ac = centres[None] - a[:, None, :]  # [N, M, D]
            denom = np.maximum(np.einsum("nd,nd->n", ab, ab), 1e-300)[:, None]
            t = np.einsum("nmd,nd->nm", ac, ab) / denom  # [N, M]
            t = np.minimum(np.maximum(t, 0.0), 1.0)
            off = ac - t[..., None] * ab[:, None, :]  # centre minus closest point
            return (np.einsum("nmd,nmd->nm", off, off) > r2).all(axis=1)

        return cls(np.asarray(low), np.asarray(high), is_free, segment_free, exact_segments=True)


@dataclass
class SamplingResult:
    """What a sampling planner found.

    Attributes:
        path: ``[K, D]`` waypoints start -> goal (shortcut if asked), ``None`` if unsolved.
        cost: its Euclidean length (``inf`` if unsolved).
        tree_cost: the best cost in the tree/roadmap before shortcutting.
        history: ``[M, 3]`` rows ``(iteration, seconds, best tree cost)``, one per
            improvement; non-increasing in cost.
        iterations: iterations run; ``nodes``: ``[n, D]`` tree vertices; ``parents``: ``[n]``.
    """

    path: np.ndarray | None
    cost: float
    tree_cost: float
    history: np.ndarray
    iterations: int
    seconds: float
    nodes: np.ndarray
    parents: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def solved(self) -> bool:
        return self.path is not None


def path_length(path: np.ndarray) -> float:
    """Euclidean length of a ``[K, D]`` polyline."""
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum()) if len(path) > 1 else 0.0


def shortcut(
    space: Space,
    path: np.ndarray,
    rng: np.random.Generator,
    rounds: int = 200,
    relax_sweeps: int = 60,
) -> np.ndarray:
    """Shorten a ``[K, D]`` path without ever lengthening it; the ends stay fixed.

    Three passes: greedy vertex skipping (from each vertex jump to the farthest visible
    one); ``rounds`` of randomised shortcutting between two points anywhere on the path;
    then, when ``space.exact_segments``, ``relax_sweeps`` of string pulling on a densified
    copy (each inner vertex moves toward the midpoint of its neighbours when both new
    segments are free; by convexity of ``|a - x| + |x - b|`` that never lengthens the
    path), which pulls the path taut around the obstacles it wraps.
    """
    path = _dedupe(np.asarray(path, dtype=float))
    if len(path) < 3:
        return path
    path = _drop_redundant(space, path)
    for _ in range(rounds):
        if len(path) < 3:
            break
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        total = cum[-1]
        if total <= 0:
            break
        s = np.sort(rng.random(2) * total)
        i = min(int(np.searchsorted(cum, s[0], side="right")) - 1, len(seg) - 1)
        j = min(int(np.searchsorted(cum, s[1], side="right")) - 1, len(seg) - 1)
        if i == j:
            continue
        pa = path[i] + (s[0] - cum[i]) / max(seg[i], 1e-300) * (path[i + 1] - path[i])
        pb = path[j] + (s[1] - cum[j]) / max(seg[j], 1e-300) * (path[j + 1] - path[j])
        if np.linalg.norm(pb - pa) >= s[1] - s[0] - 1e-12:
            continue
        if space.segments_free(pa[None], pb[None])[0]:
            path = _dedupe(np.concatenate([path[: i + 1], pa[None], pb[None], path[j + 1 :]]))
    if relax_sweeps > 0 and space.exact_segments and len(path) >= 3:
        path = _relax(space, path, relax_sweeps)
        path = _drop_redundant(space, path)
    return path


def _relax(space: Space, path: np.ndarray, sweeps: int, pieces: int = 64) -> np.ndarray:
    """String pulling: densify to about ``pieces`` segments, then move inner vertices
    (odd, then even ones, so neighbours stay fixed within a half sweep) toward their
    neighbours' midpoint; a vertex whose move collides halves its step."""
    total = path_length(path)
    if total <= 0:
        return path
    out = [path[:1]]
    for a, b in zip(path[:-1], path[1:], strict=True):
        k = max(1, int(math.ceil(np.linalg.norm(b - a) / total * pieces)))
        t = (np.arange(1, k + 1) / k)[:, None]
        out.append(a + t * (b - a))
    pts = np.concatenate(out)
    step = np.full(len(pts), 0.5)
    for _ in range(sweeps):
        moved = False
        for parity in (1, 2):
            idx = np.arange(parity, len(pts) - 1, 2)
            idx = idx[step[idx] > 1e-3]
            if len(idx) == 0:
                continue
            mid = 0.5 * (pts[idx - 1] + pts[idx + 1])
            q = pts[idx] + step[idx, None] * (mid - pts[idx])
            gain = np.linalg.norm(q - pts[idx], axis=1)
            ok = space.segments_free(pts[idx - 1], q) & space.segments_free(q, pts[idx + 1])
            ok &= space.points_free(q)
            pts[idx[ok]] = q[ok]
            step[idx[~ok]] *= 0.5
            moved |= bool((gain[ok] > 1e-9).any())
        if not moved:
            break
    return _dedupe(pts)


def _dedupe(path: np.ndarray) -> np.ndarray:
    keep = np.ones(len(path), dtype=bool)
    keep[1:] = np.linalg.norm(np.diff(path, axis=0), axis=1) > 1e-12
    return path[keep]


def _drop_redundant(space: Space, path: np.ndarray) -> np.ndarray:
    """Greedy vertex shortcut: from each kept vertex, jump to the farthest visible one."""
    out = [path[0]]
    i = 0
    n = len(path)
    while i < n - 1:
        cand = np.arange(n - 1, i, -1)
        ok = space.segments_free(np.repeat(path[i][None], len(cand), 0), path[cand])
        j = int(cand[np.argmax(ok)]) if ok.any() else i + 1
        out.append(path[j])
        i = j
    return np.asarray(out)


def _check_problem(space: Space, start, goal) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(space, Space):
        raise TypeError(f"space must be a planners.path.Space, got {type(space).__name__}")
    out = []
    for name, p in (("start", start), ("goal", goal)):
        arr = np.asarray(p, dtype=float).reshape(-1)
        if arr.shape != (space.dim,) or not np.isfinite(arr).all():
            raise ValueError(f"{name} must be a finite point of {space.dim} coordinates, got {p!r}")
        if not space.points_free(arr[None])[0]:
            raise ValueError(f"{name} {arr.tolist()} is outside the space or in collision")
        out.append(arr)
    return out[0], out[1]


def _check_budget(max_iterations: int | None, time_limit: float | None) -> None:
    if max_iterations is None and time_limit is None:
        raise ValueError("give a budget: max_iterations and/or time_limit (seconds)")
    if max_iterations is not None and (int(max_iterations) != max_iterations or max_iterations < 1):
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    if time_limit is not None and not (math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")


def _unit_ball_volume(d: int) -> float:
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1)


class _Tree:
    """Growable arrays of vertices, parents, costs-to-come and children lists."""

    def __init__(self, root: np.ndarray, capacity: int = 1024) -> None:
        self.dim = root.size
        self.nodes = np.empty((capacity, self.dim))
        self.parent = np.empty(capacity, dtype=np.int64)
        self.cost = np.empty(capacity)
        self.children: list[list[int]] = []
        self.n = 0
        self.add(root, -1, 0.0)

    def add(self, point: np.ndarray, parent: int, cost: float) -> int:
        if self.n == len(self.nodes):
            cap = 2 * len(self.nodes)
            self.nodes = np.resize(self.nodes, (cap, self.dim))
            self.parent = np.resize(self.parent, cap)
            self.cost = np.resize(self.cost, cap)
        i = self.n
        self.nodes[i] = point
        self.parent[i] = parent
        self.cost[i] = cost
        self.children.append([])
        if parent >= 0:
            self.children[parent].append(i)
        self.n += 1
        return i

    def reparent(self, child: int, new_parent: int, new_cost: float) -> None:
        old = int(self.parent[child])
        self.children[old].remove(child)
        self.children[new_parent].append(child)
        self.parent[child] = new_parent
        delta = self.cost[child] - new_cost
        stack = [child]
        while stack:  # the whole subtree gets cheaper by the same amount
            k = stack.pop()
            self.cost[k] -= delta
            stack.extend(self.children[k])

    def branch(self, i: int) -> np.ndarray:
        chain = []
        while i >= 0:
            chain.append(i)
            i = int(self.parent[i])
        return self.nodes[chain[::-1]]


def _informed_sample(
    rng: np.random.Generator,
    start: np.ndarray,
    goal: np.ndarray,
    c_best: float,
    rotation: np.ndarray,
    space: Space,
) -> np.ndarray:
    """A uniform sample of the prolate hyperspheroid {x : |x-start| + |x-goal| <= c_best}
    intersected with the box (rejection on the box)."""
    d = start.size
    c_min = float(np.linalg.norm(goal - start))
    centre = (start + goal) / 2
    r1 = c_best / 2
    r_other = math.sqrt(max(c_best**2 - c_min**2, 0.0)) / 2
    radii = np.array([r1] + [r_other] * (d - 1))
    for _ in range(100):
        x = rng.standard_normal(d)
        x *= rng.random() ** (1.0 / d) / np.linalg.norm(x)
        p = rotation @ (radii * x) + centre
        if np.all((p >= space.low) & (p <= space.high)):
            return p
    return space.low + rng.random(d) * (space.high - space.low)


def _rotation_to_world(start: np.ndarray, goal: np.ndarray) -> np.ndarray:
    d = start.size
    a1 = (goal - start) / max(np.linalg.norm(goal - start), 1e-300)
    m = np.outer(a1, np.eye(d)[0])
    u, _, vt = np.linalg.svd(m)
    diag = np.ones(d)
    diag[-1] = np.linalg.det(u) * np.linalg.det(vt.T)
    return u @ np.diag(diag) @ vt


def _grow(
    space: Space,
    start,
    goal,
    *,
    optimise: bool,
    informed: bool,
    max_iterations: int | None,
    time_limit: float | None,
    step_size: float | None,
    goal_bias: float,
    rewire_factor: float,
    seed: int | np.random.Generator,
    shortcut_rounds: int,
    try_direct: bool = True,
    neighbours: str = "radius",
) -> SamplingResult:
    start, goal = _check_problem(space, start, goal)
    _check_budget(max_iterations, time_limit)
    if not 0 <= goal_bias <= 1:
        raise ValueError(f"goal_bias must lie in [0, 1], got {goal_bias}")
    if rewire_factor <= 0:
        raise ValueError(f"rewire_factor must be positive, got {rewire_factor}")
    rng = np.random.default_rng(seed)
    d = space.dim
    span = space.high - space.low
    if step_size is None:
        step_size = 0.2 * float(np.linalg.norm(span)) if optimise else 0.05 * float(
            np.linalg.norm(span)
        )
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    gamma = (
        rewire_factor
        * 2.0
        * (1.0 + 1.0 / d) ** (1.0 / d)
        * (float(np.prod(span)) / _unit_ball_volume(d)) ** (1.0 / d)
    )
    rotation = _rotation_to_world(start, goal) if informed else None
    k_rrt = rewire_factor * math.e * (1.0 + 1.0 / d) if neighbours == "knearest" else None
    if neighbours not in ("radius", "knearest"):
        raise ValueError(f"neighbours must be 'radius' or 'knearest', got {neighbours!r}")
    c_min = float(np.linalg.norm(goal - start))

    tree = _Tree(start)
    goal_parents: list[int] = []
    best_cost = math.inf
    best_node = -1
    history: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()
    it = 0
    if try_direct and space.segments_free(start[None], goal[None])[0]:
        best_cost, best_node = c_min, 0
        goal_parents.append(0)
        history.append((0, 0.0, best_cost))
    while True:
        if max_iterations is not None and it >= max_iterations:
            break
        if time_limit is not None and time.perf_counter() - t0 >= time_limit:
            break
        if not optimise and best_node >= 0:
            break
        if optimise and best_cost <= c_min * (1 + 1e-12):
            break  # the straight line: nothing left to improve
        it += 1
        # -- sample
        if informed and best_node >= 0:
            x_rand = _informed_sample(rng, start, goal, best_cost, rotation, space)
        elif rng.random() < goal_bias:
            x_rand = goal
        else:
            x_rand = space.low + rng.random(d) * span
        n = tree.n
        nodes = tree.nodes[:n]
        diff = nodes - x_rand
        d2 = np.einsum("ij,ij->i", diff, diff)
        nearest = int(np.argmin(d2))
        dist = math.sqrt(d2[nearest])
        if dist < 1e-12:
            continue
        clipped = dist > step_size
        if clipped:
            x_new = tree.nodes[nearest] + (x_rand - tree.nodes[nearest]) * (step_size / dist)
        else:
            x_new = x_rand.copy()
        if not space.points_free(x_new[None])[0]:
            continue
        if optimise:
            if clipped:
                diff = nodes - x_new
                d2 = np.einsum("ij,ij->i", diff, diff)
            dn = np.sqrt(d2)
            if k_rrt is not None:  # k-nearest: k = k_rrt log(n + 1)
                k = min(n, int(math.ceil(k_rrt * math.log(n + 1))))
                near = np.argpartition(d2, k - 1)[:k] if k < n else np.arange(n)
                near = near[dn[near] <= step_size]
            else:
                radius = min(gamma * (math.log(n + 1) / (n + 1)) ** (1.0 / d), step_size)
                near = np.flatnonzero(dn <= radius)
            if nearest not in near:
                near = np.append(near, nearest)
            ok = space.segments_free(nodes[near], np.repeat(x_new[None], len(near), 0))
            if not ok.any():
                continue
            via = tree.cost[near] + dn[near]
            via[~ok] = math.inf
            k = int(np.argmin(via))
            new = tree.add(x_new, int(near[k]), float(via[k]))
            # Rewire: neighbours that get cheaper through the new vertex.
            better = ok & (tree.cost[new] + dn[near] < tree.cost[near] - 1e-12)
            for j, dj in zip(near[better], dn[near][better], strict=True):
                if tree.cost[new] + dj < tree.cost[j] - 1e-12:  # may have changed above
                    tree.reparent(int(j), new, tree.cost[new] + float(dj))
        else:
            if not space.segments_free(tree.nodes[nearest][None], x_new[None])[0]:
                continue
            new = tree.add(x_new, nearest, tree.cost[nearest] + float(np.linalg.norm(
                x_new - tree.nodes[nearest])))
        # -- goal connection
        dg = math.dist(goal, x_new)
        if dg <= step_size and space.segments_free(x_new[None], goal[None])[0]:
            goal_parents.append(new)
        if goal_parents:
            gp = np.asarray(goal_parents)
            totals = tree.cost[gp] + np.linalg.norm(tree.nodes[gp] - goal, axis=1)
            k = int(np.argmin(totals))
            if totals[k] < best_cost - 1e-12:
                best_cost, best_node = float(totals[k]), int(gp[k])
                history.append((it, time.perf_counter() - t0, best_cost))
    seconds = time.perf_counter() - t0
    path = None
    cost = math.inf
    if best_node >= 0:
        raw = np.vstack([tree.branch(best_node), goal[None]])
        raw = _dedupe(raw)
        path = shortcut(space, raw, rng, shortcut_rounds) if shortcut_rounds > 0 else raw
        cost = path_length(path)
    log.debug("%s: %d iterations, %d nodes, cost %.4f", "rrt*" if optimise else "rrt", it, tree.n,
              best_cost)
    return SamplingResult(
        path=path,
        cost=cost,
        tree_cost=best_cost,
        history=np.asarray(history, dtype=float).reshape(-1, 3),
        iterations=it,
        seconds=seconds,
        nodes=tree.nodes[: tree.n].copy(),
        parents=tree.parent[: tree.n].copy(),
    )


def rrt(
    space: Space,
    start,
    goal,
    max_iterations: int | None = 10_000,
    time_limit: float | None = None,
    step_size: float | None = None,
    goal_bias: float = 0.05,
    seed: int | np.random.Generator = 0,
    shortcut_rounds: int = 0,
) -> SamplingResult:
    """RRT (LaValle 1998): grow a tree toward random samples until the goal connects.

    Args:
        space: the :class:`Space`; ``start``, ``goal``: ``[D]`` points.
        max_iterations / time_limit: budget (either or both; the first reached stops).
        step_size: steering distance (default 5% of the box diagonal).
        goal_bias: probability of sampling the goal itself.
        shortcut_rounds: randomised shortcutting of the result (0 = raw tree path).
    """
    return _grow(space, start, goal, optimise=False, informed=False,
                 max_iterations=max_iterations, time_limit=time_limit, step_size=step_size,
                 goal_bias=goal_bias, rewire_factor=1.0, seed=seed,
                 shortcut_rounds=shortcut_rounds)


def rrt_star(
    space: Space,
    start,
    goal,
    max_iterations: int | None = None,
    time_limit: float | None = 1.0,
    step_size: float | None = None,
    goal_bias: float = 0.05,
    rewire_factor: float = 1.1,
    seed: int | np.random.Generator = 0,
    shortcut_rounds: int = 200,
    informed: bool = False,
    try_direct: bool = True,
) -> SamplingResult:
    """RRT* (Karaman & Frazzoli 2011): RRT that picks the cheapest parent within the
    shrinking radius and rewires neighbours through each new vertex; keeps improving until
    the budget ends. The returned ``path`` is shortcut (``shortcut_rounds``);
    ``tree_cost`` and ``history`` are the tree's own.

    Args: as :func:`rrt`, plus ``rewire_factor`` (>= 1 keeps asymptotic optimality; the
    radius is also capped by ``step_size``, default 20% of the box diagonal) and
    ``informed`` (see :func:`informed_rrt_star`). ``try_direct`` first tries the straight
    segment start -> goal (switch off to watch the tree converge on its own).
    """
    return _grow(space, start, goal, optimise=True, informed=informed,
                 max_iterations=max_iterations, time_limit=time_limit, step_size=step_size,
                 goal_bias=goal_bias, rewire_factor=rewire_factor, seed=seed,
                 shortcut_rounds=shortcut_rounds, try_direct=try_direct)


def informed_rrt_star(
    space: Space,
    start,
    goal,
    max_iterations: int | None = None,
    time_limit: float | None = 1.0,
    step_size: float | None = None,
    goal_bias: float = 0.05,
    rewire_factor: float = 1.1,
    seed: int | np.random.Generator = 0,
    shortcut_rounds: int = 200,
) -> SamplingResult:
    """Informed RRT* (Gammell et al. 2014): RRT* that, once a solution of cost ``c`` exists,
    samples only the ellipsoid ``|x - start| + |x - goal| <= c`` of states that can improve
    it. Same arguments as :func:`rrt_star`."""
    return _grow(space, start, goal, optimise=True, informed=True,
                 max_iterations=max_iterations, time_limit=time_limit, step_size=step_size,
                 goal_bias=goal_bias, rewire_factor=rewire_factor, seed=seed,
                 shortcut_rounds=shortcut_rounds)


def prm(
    space: Space,
    start,
    goal,
    n_samples: int = 1000,
    k: int | None = None,
    seed: int | np.random.Generator = 0,
    shortcut_rounds: int = 0,
) -> SamplingResult:
    """PRM* (Karaman & Frazzoli 2011): ``n_samples`` uniform free samples plus start and
    goal, each joined to its ``k`` nearest neighbours (default ``e (1 + 1/D) log n``) by
    free segments, then Dijkstra over the roadmap (scipy). ``history`` has one row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra as csgraph_dijkstra
    from scipy.spatial import cKDTree

    start, goal = _check_problem(space, start, goal)
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    d = space.dim
    pts = space.low + rng.random((int(n_samples), d)) * (space.high - space.low)
    pts = pts[space.points_free(pts)]
    nodes = np.vstack([start[None], goal[None], pts])
    n = len(nodes)
    if k is None:
        k = int(math.ceil(math.e * (1 + 1 / d) * math.log(n)))
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    k = min(k, n - 1)
    dist, idx = cKDTree(nodes).query(nodes, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    cols = idx[:, 1:].reshape(-1)
    valid = np.isfinite(dist[:, 1:].reshape(-1)) & (rows != cols)
    rows, cols = rows[valid], cols[valid]
    # Undirected: check each pair once.
    pairs = np.unique(np.stack([np.minimum(rows, cols), np.maximum(rows, cols)], 1), axis=0)
    lens = np.linalg.norm(nodes[pairs[:, 0]] - nodes[pairs[:, 1]], axis=1)
    ok = space.segments_free(nodes[pairs[:, 0]], nodes[pairs[:, 1]])
    pairs, lens = pairs[ok], lens[ok]
    graph = coo_matrix((lens, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    dist_to, pred = csgraph_dijkstra(graph, directed=False, indices=0, return_predecessors=True)
    seconds = time.perf_counter() - t0
    parents = pred.astype(np.int64)
    tree_cost = float(dist_to[1])
    path = None
    cost = math.inf
    if math.isfinite(tree_cost):
        chain = [1]
        while chain[-1] != 0:
            chain.append(int(pred[chain[-1]]))
        path = nodes[chain[::-1]]
        if shortcut_rounds > 0:
            path = shortcut(space, path, rng, shortcut_rounds)
        cost = path_length(path)
    history = np.array([[n_samples, seconds, tree_cost]]) if math.isfinite(tree_cost) else (
        np.zeros((0, 3)))
    return SamplingResult(
        path=path,
        cost=cost,
        tree_cost=tree_cost,
        history=history,
        iterations=int(n_samples),
        seconds=seconds,
        nodes=nodes,
        parents=parents,
        info={"edges": pairs},
    )
