"""Path-planning benchmark: grid A* against a plain heapq A* and pyastar2d (C++), and
RRT* against OMPL's RRT* (Python bindings, validity checked by a Python callback).

    python benchmarks/bench_path.py [--quick]

Prints tables and writes benchmarks/results/path.json. Timings are the best of a few
repeats (the machine is shared); every comparison runs side by side in this process.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worldplan.checkpoint import atomic_write_text  # noqa: E402
from worldplan.envs.maps import OccupancyGrid  # noqa: E402
from worldplan.planners.path import Space, astar, informed_rrt_star, rrt_star  # noqa: E402

SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- grid A*
def heapq_astar(occ: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> float:
    """The plain Python reference: 8-connected (corner cutting allowed, the graph
    pyastar2d searches), octile heuristic, dict/set bookkeeping; returns the cost."""
    h, w = occ.shape
    grid = occ.tolist()
    gr, gc = goal

    def heur(r: int, c: int) -> float:
        dr, dc = abs(r - gr), abs(c - gc)
        return dr + dc + (SQRT2 - 2) * min(dr, dc)

    moves = [(-1, 0, 1.0), (1, 0, 1.0), (0, -1, 1.0), (0, 1, 1.0),
             (-1, -1, SQRT2), (-1, 1, SQRT2), (1, -1, SQRT2), (1, 1, SQRT2)]
    g = {start: 0.0}
    closed = set()
    heap = [(heur(*start), 0.0, start)]
    while heap:
        _, gu, u = heapq.heappop(heap)
        if u in closed:
            continue
        if u == goal:
            return gu
        closed.add(u)
        r, c = u
        for dr, dc, step in moves:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and not grid[rr][cc]:
                ng = gu + step
                v = (rr, cc)
                if ng < g.get(v, math.inf):
                    g[v] = ng
                    heapq.heappush(heap, (ng + heur(rr, cc), ng, v))
    return math.inf


def cells_cost(cells: np.ndarray) -> float:
    steps = np.abs(np.diff(np.asarray(cells), axis=0)).sum(axis=1)
    return float(np.where(steps == 2, SQRT2, 1.0).sum())


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_grid(quick: bool) -> list[dict]:
    import pyastar2d

    n = 1000
    cases = []
    rnd = OccupancyGrid.random((n, n), 0.2, seed=0)
    rnd.occupied[0, 0] = rnd.occupied[n - 1, n - 1] = False
    cases.append(("random 20%", rnd, (0, 0), (n - 1, n - 1)))
    maze = OccupancyGrid.maze((n, n), seed=0)
    cases.append(("maze", maze, (0, 0), (n - 2, n - 2)))
    rows = []
    for name, grid, start, goal in cases:
        occ = grid.occupied
        astar(grid, start, goal)  # build/load the native core once, outside the timing
        reps = 3 if quick else 7
        t_ours, path = best_time(lambda g=grid, s=start, e=goal: astar(g, s, e,
                                                                        corner_cutting=True),
                                 reps)
        t_ours_nc, path_nc = best_time(lambda g=grid, s=start, e=goal: astar(g, s, e), reps)
        weights = np.where(occ, np.inf, 1.0).astype(np.float32)
        t_pya, pya = best_time(
            lambda w=weights, s=start, e=goal: pyastar2d.astar_path(w, s, e, allow_diagonal=True),
            reps,
        )
        t_heap, heap_cost = best_time(lambda o=occ, s=start, e=goal: heapq_astar(o, s, e),
                                      1 if quick else 2)
        row = {
            "case": name,
            "ours_cost": path.cost,
            "ours_time_s": t_ours,
            "ours_expanded": path.expanded,
            "ours_no_corner_cutting_cost": path_nc.cost,
            "ours_no_corner_cutting_time_s": t_ours_nc,
            "heapq_cost": heap_cost,
            "heapq_time_s": t_heap,
            "pyastar2d_cost": cells_cost(pya),
            "pyastar2d_time_s": t_pya,
            "speedup_vs_heapq": t_heap / t_ours,
            "time_ratio_vs_pyastar2d": t_ours / t_pya,
            "optimal": bool(abs(path.cost - heap_cost) < 1e-6),
        }
        rows.append(row)
    print("\nGrid A*, 1000 x 1000, corner to corner, 8-connected with corner cutting")
    print(f"{'case':<12}{'ours cost':>11}{'heapq cost':>11}{'pyastar2d':>11}"
          f"{'ours s':>9}{'heapq s':>9}{'pya2d s':>9}{'x heapq':>9}{'/ pya2d':>9}")
    for r in rows:
        print(f"{r['case']:<12}{r['ours_cost']:>11.2f}{r['heapq_cost']:>11.2f}"
              f"{r['pyastar2d_cost']:>11.2f}{r['ours_time_s']:>9.4f}{r['heapq_time_s']:>9.3f}"
              f"{r['pyastar2d_time_s']:>9.4f}{r['speedup_vs_heapq']:>9.1f}"
              f"{r['time_ratio_vs_pyastar2d']:>9.2f}")
    for r in rows:
        cost, secs = r["ours_no_corner_cutting_cost"], r["ours_no_corner_cutting_time_s"]
        print(f"  {r['case']}: no corner cutting (our default): cost {cost:.2f} in {secs:.4f} s")
    return rows


# --------------------------------------------------------------------------- RRT* vs OMPL
START, GOAL = (0.05, 0.05), (0.95, 0.95)


def circle_map(seed: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``n`` discs in the unit square, centres uniform, radii uniform in [0.04, 0.08], none
    within 0.02 of the start or goal."""
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    s, g = np.array(START), np.array(GOAL)
    while len(centres) < n:
        c, r = rng.random(2), rng.uniform(0.04, 0.08)
        if min(np.linalg.norm(c - s), np.linalg.norm(c - g)) > r + 0.02:
            centres.append(c)
            radii.append(r)
    return np.array(centres), np.array(radii)


def ompl_rrt_star(centres: np.ndarray, radii: np.ndarray, budget: float, informed: bool = False
                  ) -> dict:
    import ompl.base as ob
    import ompl.geometric as og
    import ompl.util as ou

    ou.setLogLevel(ou.LogLevel.LOG_NONE)
    discs = [(float(c[0]), float(c[1]), float(r) ** 2) for c, r in zip(centres, radii,
                                                                        strict=True)]

    def valid(state) -> bool:  # what a Python user writes
        x, y = state[0], state[1]
        for cx, cy, r2 in discs:
            if (x - cx) ** 2 + (y - cy) ** 2 <= r2:
                return False
        return True

    space = ob.RealVectorStateSpace(2)
    bounds = ob.RealVectorBounds(2)
    bounds.setLow(0.0)
    bounds.setHigh(1.0)
    space.setBounds(bounds)
    ss = og.SimpleSetup(space)
    ss.setStateValidityChecker(valid)
    start, goal = space.allocState(), space.allocState()
    start[0], start[1] = START
    goal[0], goal[1] = GOAL
    ss.setStartAndGoalStates(start, goal)
    si = ss.getSpaceInformation()
    planner = og.InformedRRTstar(si) if informed else og.RRTstar(si)
    ss.setPlanner(planner)
    ss.setup()
    t0 = time.perf_counter()
    ss.solve(budget)
    seconds = time.perf_counter() - t0
    if not ss.haveExactSolutionPath():
        return {"solved": False, "cost": math.inf, "simplified_cost": math.inf,
                "seconds": seconds}
    path = ss.getSolutionPath()
    cost = float(path.length())
    exact = Space.from_circles(centres, radii)

    def exactly_free(p) -> bool:  # OMPL checks motions at 1% of the extent, not exactly
        pts = np.array([[p.getState(i)[0], p.getState(i)[1]] for i in range(p.getStateCount())])
        return bool(exact.segments_free(pts[:-1], pts[1:]).all())

    raw_free = exactly_free(path)
    ss.simplifySolution(0.05)
    simplified = ss.getSolutionPath()
    return {"solved": True, "cost": cost, "simplified_cost": float(simplified.length()),
            "seconds": seconds, "exactly_free": raw_free and exactly_free(simplified)}


def ours(centres: np.ndarray, radii: np.ndarray, budget: float, seed: int, informed: bool
         ) -> dict:
    space = Space.from_circles(centres, radii)
    fn = informed_rrt_star if informed else rrt_star
    t0 = time.perf_counter()
    result = fn(space, START, GOAL, time_limit=budget, seed=seed)
    seconds = time.perf_counter() - t0
    free = result.solved and bool(space.segments_free(result.path[:-1], result.path[1:]).all())
    return {"solved": result.solved, "cost": result.tree_cost, "simplified_cost": result.cost,
            "seconds": seconds, "iterations": result.iterations, "exactly_free": free}


def bench_rrt(quick: bool) -> list[dict]:
    maps = 5 if quick else 20
    budgets = [0.5, 1.0] if quick else [1.0, 5.0]
    rows = []
    for budget in budgets:
        runs: dict[str, list[dict]] = {"ours RRT*": [], "ours informed RRT*": [],
                                       "OMPL RRT*": []}
        for seed in range(maps):
            centres, radii = circle_map(seed)
            runs["ours RRT*"].append(ours(centres, radii, budget, seed, informed=False))
            runs["ours informed RRT*"].append(ours(centres, radii, budget, seed, informed=True))
            runs["OMPL RRT*"].append(ompl_rrt_star(centres, radii, budget))
        for name, results in runs.items():
            solved = [r for r in results if r["solved"]]
            rows.append({
                "planner": name,
                "budget_s": budget,
                "maps": maps,
                "solved": len(solved),
                "mean_tree_cost": float(np.mean([r["cost"] for r in results])),
                "mean_simplified_cost": float(np.mean([r["simplified_cost"] for r in results])),
                "mean_seconds": float(np.mean([r["seconds"] for r in results])),
                "exactly_collision_free": int(sum(r.get("exactly_free", False) for r in results)),
                "per_map_tree_cost": [r["cost"] for r in results],
            })
    print(f"\nRRT* on {maps} maps of 20 discs, {START} -> {GOAL} (straight line "
          f"{math.dist(START, GOAL):.4f}); tree cost = the planner's own best path, "
          "simplified = after our shortcutting / OMPL's simplifySolution")
    print(f"{'planner':<22}{'budget':>8}{'solved':>8}{'tree cost':>11}{'simplified':>12}"
          f"{'wall s':>8}{'exactly free':>14}")
    for r in rows:
        print(f"{r['planner']:<22}{r['budget_s']:>8.1f}{r['solved']:>5}/{r['maps']:<2}"
              f"{r['mean_tree_cost']:>11.4f}{r['mean_simplified_cost']:>12.4f}"
              f"{r['mean_seconds']:>8.2f}{r['exactly_collision_free']:>11}/{r['maps']}")
    return rows


def figure(path: Path, budget: float = 1.0) -> None:
    """One RRT* run on map 1 (map 0 has a straight-line solution): the tree, its best
    path, the shortcut path, and the best cost over time for RRT* and informed RRT*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldplan.experiments.common import save_figure

    centres, radii = circle_map(1)
    space = Space.from_circles(centres, radii)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, fn, name in ((axes[0], rrt_star, "RRT*"), (axes[1], informed_rrt_star,
                                                        "informed RRT*")):
        res = fn(space, START, GOAL, time_limit=budget, seed=0)
        for c, r in zip(centres, radii, strict=True):
            ax.add_patch(plt.Circle(c, r, color="0.4"))
        nodes, parents = res.nodes, res.parents
        for i in range(1, len(nodes)):
            a, b = nodes[i], nodes[parents[i]]
            ax.plot([a[0], b[0]], [a[1], b[1]], c="tab:blue", lw=0.3, alpha=0.5)
        ax.plot(res.path[:, 0], res.path[:, 1], c="tab:red", lw=2,
                label=f"shortcut path {res.cost:.4f}")
        ax.set_title(f"{name}, {budget:g} s: {res.iterations} iterations, tree cost "
                     f"{res.tree_cost:.4f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.legend(fontsize=8, loc="lower right")
        axes[2].step(res.history[:, 1], res.history[:, 2], where="post", label=name)
    axes[2].axhline(math.dist(START, GOAL), ls="--", c="k", lw=0.8, label="straight line")
    axes[2].set_xlabel("seconds")
    axes[2].set_ylabel("best tree cost")
    axes[2].legend(fontsize=8)
    axes[2].set_title("best cost over time (never increases)", fontsize=9)
    save_figure(fig, path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer maps, shorter budgets")
    parser.add_argument("--skip-rrt", action="store_true", help="grid A* only")
    parser.add_argument("--skip-grid", action="store_true", help="RRT* only")
    parser.add_argument("--figure", action="store_true",
                        help="only draw benchmarks/results/path_rrt_star.png")
    args = parser.parse_args()
    if args.figure:
        figure(ROOT / "benchmarks" / "results" / "path_rrt_star.png")
        return
    out = {"machine": platform.platform(), "python": platform.python_version(),
           "quick": args.quick}
    if not args.skip_grid:
        out["grid_astar"] = bench_grid(args.quick)
    if not args.skip_rrt:
        out["rrt_star"] = bench_rrt(args.quick)
    path = ROOT / "benchmarks" / "results" / "path.json"
    if (args.skip_grid or args.skip_rrt) and path.is_file():  # keep the part not re-run
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
        for key in ("grid_astar", "rrt_star"):
            if key not in out and key in previous:
                out[key] = previous[key]
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
