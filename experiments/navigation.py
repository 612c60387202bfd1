"""``worldplan navigation evaluate``: plan, track and localise on random maps.

For each of ``episodes`` seeded maps of ``worldplan/Navigation2D-v0``:

1. a path planner (grid A* on the map inflated by the robot radius plus a margin, then
   shortcut; or RRT* on the same map) gives a path from the known start to the goal;
2. a pure-pursuit tracker follows it, steering from the *estimated* position;
3. a particle filter (``worldplan.filters.ParticleFilter``, the task model's dynamics as the
   transition, Gaussian landmark ranges as the likelihood) localises the robot from the
   noisy ranges, one step at a time.

Success = the true robot reaches the goal within ``max_steps``. Metrics (success rate,
localisation error, path lengths, collisions) go to metrics.json; figures of the maps,
paths, tracked and estimated trajectories and particle clouds to figures/.

Length: the task's stages, its config and the three pieces they run together (the
planner of the path, the tracking MPC, the particle-filter localiser) are read as one
story; each piece is a small class.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from tqdm import tqdm

from worldplan.envs.maps import OccupancyGrid
from worldplan.envs.navigation import MapConfig, Navigation2DEnv, NavigationParams
from worldplan.experiments.common import save_figure, seed_everything
from worldplan.experiments.runs import Run
from worldplan.experiments.tasks import Task, register_task
from worldplan.filters.particle import ParticleFilter, systematic_resample
from worldplan.planners.control_loop import Transition, run_episodes
from worldplan.planners.mpc import MPPI
from worldplan.planners.path import NoPathError, Space, astar, rrt_star, shortcut

log = logging.getLogger(__name__)

PLANNERS = ("astar", "rrt_star")
TRACKERS = ("pursuit", "mppi")
FIGURES = ("maps_paths.png", "particles.png", "localisation_error.png")


@dataclass
class NavigationConfig:
    """Evaluation of plan -> track -> localise on random maps."""

    seed: int = 0
    device: str = "cpu"
    episodes: int = 100
    planner: str = "astar"  # astar | rrt_star
    rrt_time: float = 0.5  # s, budget when planner == rrt_star
    margin: float = 0.1  # m, added to the robot radius when inflating the map
    plan_resolution: float = 0.1  # m, the map is split to about this cell size to plan
    tracker: str = "pursuit"  # pursuit | mppi (planners.mpc.MPPI on the task model)
    speed: float = 0.7  # m/s, tracker cruise speed
    lookahead: float = 0.5  # m, pure-pursuit lookahead along the path
    n_particles: int = 400
    init_std: float = 0.3  # m, spread of the initial particles around the known start
    max_steps: int = 300
    figure_episodes: int = 4
    map: MapConfig = field(default_factory=MapConfig)


def plan_path(grid: OccupancyGrid, start: np.ndarray, goal: np.ndarray,
              config: NavigationConfig, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Waypoints ``[K, 2]`` (metres) from ``start`` to ``goal`` on ``grid`` inflated by
    ``radius + margin`` (by ``radius`` alone if the margin closes the way)."""
    if config.planner not in PLANNERS:
        raise ValueError(f"planner must be one of {', '.join(PLANNERS)}, got {config.planner!r}")
    last_error: Exception | None = None
    # Plan on a map of about 0.1 m cells, so inflating by less than a cell means something.
    fine = grid.upsample(max(1, math.ceil(grid.resolution / config.plan_resolution - 1e-9)))
    for inflate in (radius + config.margin, radius):
        inflated = fine.inflate(inflate)
        space = Space.from_grid(inflated)
        s_cell = tuple(int(v) for v in inflated.world_to_cell(start))
        g_cell = tuple(int(v) for v in inflated.world_to_cell(goal))
        try:
            if config.planner == "rrt_star":
                if not space.points_free(np.stack([start, goal])).all():
                    raise NoPathError("start or goal inside the inflated map")
                result = rrt_star(space, start, goal, time_limit=config.rrt_time, seed=rng)
                if not result.solved:
                    raise NoPathError("RRT* found no path in its budget")
                return result.path
            path = astar(inflated, s_cell, g_cell)
        except (NoPathError, ValueError) as exc:
            last_error = exc
            continue
        points = np.vstack([start, path.points[1:-1], goal])
        return shortcut(space, points, rng, rounds=100)
    raise NoPathError(f"no path on this map: {last_error}")


class PurePursuit:
    """Velocity commands toward the point ``lookahead`` metres further along the path
    than the path point closest to the estimate; never moves backwards along the path."""

    def __init__(self, path: np.ndarray, speed: float, lookahead: float, dt: float) -> None:
        self.path = np.asarray(path, dtype=float)
        seg = np.linalg.norm(np.diff(self.path, axis=0), axis=1)
        self.cum = np.concatenate([[0.0], np.cumsum(seg)])
        self.speed, self.lookahead, self.dt = speed, lookahead, dt
        self.progress = 0.0

    def point_at(self, s: float) -> np.ndarray:
        s = float(np.clip(s, 0.0, self.cum[-1]))
        i = min(int(np.searchsorted(self.cum, s, side="right")) - 1, len(self.path) - 2)
        if i < 0:
            return self.path[0]
        seg = self.cum[i + 1] - self.cum[i]
        t = 0.0 if seg <= 0 else (s - self.cum[i]) / seg
        return self.path[i] + t * (self.path[i + 1] - self.path[i])

    def _project(self, p: np.ndarray) -> float:
        a, b = self.path[:-1], self.path[1:]
        ab = b - a
        denom = np.maximum((ab**2).sum(1), 1e-12)
        t = np.clip(((p - a) * ab).sum(1) / denom, 0.0, 1.0)
        d = np.linalg.norm(a + t[:, None] * ab - p, axis=1)
        # Only look near the current progress, so a loop in the path is not skipped.
        s = self.cum[:-1] + t * np.sqrt(denom)
        d[(s < self.progress - 0.5) | (s > self.progress + 2.0)] = np.inf
        k = int(np.argmin(d))
        return float(s[k]) if np.isfinite(d[k]) else self.progress

    def __call__(self, estimate: np.ndarray) -> np.ndarray:
        self.progress = max(self.progress, self._project(estimate))
        target = self.point_at(self.progress + self.lookahead)
        delta = target - estimate
        dist = float(np.linalg.norm(delta))
        to_goal = float(np.linalg.norm(self.path[-1] - estimate))
        speed = min(self.speed, to_goal / (2 * self.dt) + 0.05)
        if dist < 1e-9:
            return np.zeros(2)
        return delta / dist * speed


class MPPITracker:
    """Path following by MPPI (:class:`worldplan.planners.mpc.MPPI`) on the task model's dynamics:
    each step the pure-pursuit point ``lookahead`` metres ahead becomes the target, and
    the running cost is the distance to it plus a steep penalty where the robot disc comes
    within ``clearance`` metres of a wall (looked up in a distance map of the map)."""

    def __init__(self, path: np.ndarray, task_model, grid: OccupancyGrid, robot_radius: float,
                 config: NavigationConfig, seed: int, clearance: float = 0.05) -> None:
        from scipy.ndimage import distance_transform_edt

        self.pursuit = PurePursuit(path, config.speed, 2 * config.lookahead,
                                   task_model.params.dt)
        fine = grid.upsample(max(1, math.ceil(grid.resolution / 0.05 - 1e-9)))
        self.res = fine.resolution
        self.origin = torch.tensor(fine.origin, dtype=torch.float32)
        dist = distance_transform_edt(~fine.occupied) * fine.resolution
        self.dist = torch.tensor(dist, dtype=torch.float32)  # [H, W] metres to a wall
        self.limit = robot_radius + clearance
        self.target = torch.zeros(2)
        self.goal = torch.tensor(path[-1], dtype=torch.float32)
        self.tm = task_model
        self.mppi = MPPI(task_model.step, self._cost, task_model.action_low,
                         task_model.action_high, horizon=10, samples=128, temperature=0.05,
                         noise_sigma=0.3**2, seed=seed)

    def _cost(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        pos = state[:, :2]
        idx = torch.floor((pos - self.origin.to(pos)) / self.res).long()
        h, w = self.dist.shape
        col = idx[:, 0].clamp(0, w - 1)
        row = idx[:, 1].clamp(0, h - 1)
        clearance = self.dist.to(pos)[row, col]
        wall = torch.relu(self.limit - clearance) * 100.0
        return torch.linalg.norm(pos - self.target.to(pos), dim=1) + wall + 0.01 * (
            action**2).sum(1)

    def __call__(self, estimate: np.ndarray) -> np.ndarray:
        self.pursuit.progress = max(self.pursuit.progress, self.pursuit._project(estimate[:2]))
        target = self.pursuit.point_at(self.pursuit.progress + self.pursuit.lookahead)
        self.target = torch.tensor(target, dtype=torch.float32)
        state = torch.tensor(estimate, dtype=torch.float32)[None]
        action = self.mppi.act(state)[0].numpy().astype(np.float64)
        to_goal = float(np.linalg.norm(self.pursuit.path[-1] - estimate[:2]))
        cap = min(self.pursuit.speed, to_goal / (2 * self.pursuit.dt) + 0.05)
        norm = float(np.linalg.norm(action))
        return action * (cap / norm) if norm > cap else action


class OnlineParticleFilter:
    """One-step-at-a-time use of :class:`worldplan.filters.ParticleFilter`: each step runs its
    ``filter`` over two time steps (the previous particles, then the transition under the
    applied control and the new measurement) and resamples the weighted result.

    The transition is the task model's, made map-aware: a particle whose step would put
    the robot disc into a wall stays where it was with zero velocity (the contact the
    task model leaves out), so the cloud does not drive through walls when the robot is
    stuck against one."""

    def __init__(self, task_model, start_state: np.ndarray, n_particles: int, init_std: float,
                 seed: int, robot_radius: float = 0.0) -> None:
        self._resample = systematic_resample
        # Extra noise for what the model leaves out: contacts stop the robot dead, so
        # velocities near zero must stay represented in the cloud.
        q = task_model.process_noise.double() + torch.diag(
            torch.tensor([0.02**2, 0.02**2, 0.2**2, 0.2**2], dtype=torch.float64))
        r = task_model.measurement_noise.double()

        grid = task_model.occupancy
        free_map = grid.upsample(max(1, math.ceil(grid.resolution / 0.05 - 1e-9)))
        free_map = free_map.inflate(robot_radius)

        def transition(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            nxt = task_model.step(x, u)
            blocked = ~free_map.is_free(nxt[:, :2])
            if bool(blocked.any()):
                stuck = torch.cat([x[:, :2], torch.zeros_like(x[:, 2:])], dim=1)
                nxt = torch.where(blocked[:, None], stuck, nxt)
            return nxt

        def measure(x: torch.Tensor) -> torch.Tensor:
            return task_model.observe(x)

        self.pf = ParticleFilter(transition, measure, Q=q, R=r, n_particles=n_particles,
                                 ess_threshold=0.0, seed=seed)
        self.gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(n_particles, 4, generator=self.gen, dtype=torch.float64)
        noise[:, 2:] *= 0.05
        noise[:, :2] *= init_std
        self.particles = torch.as_tensor(start_state, dtype=torch.float64)[None] + noise
        self.k = task_model.measurement_noise.shape[0]
        self.step_count = 0

    def update(self, control: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance with ``control`` ``[2]`` and weight with ``ranges`` ``[K]``; returns the
        mean ``[4]`` and the (resampled) particles ``[N, 4]``."""
        z = np.full((2, self.k), np.nan)
        z[1] = ranges
        u = np.asarray(control, dtype=np.float64)[None]
        self.pf.seed = self.pf.seed + 1  # fresh noise every step, still reproducible
        mean, _ = self.pf.filter(z, controls=u, initial_particles=self.particles,
                                 keep_history=True)
        parts = self.pf.particle_history[0, 1]  # [N, 4] weighted, before resampling
        weights = self.pf.weight_history[0, 1]  # [N]
        idx = self._resample(weights[None], self.gen)[0]
        self.particles = parts[idx].clone()
        self.step_count += 1
        return np.asarray(mean[1]), self.particles.numpy()


@dataclass
class EpisodeRecord:
    seed: int
    success: bool
    steps: int
    collisions: int
    path: np.ndarray
    true: np.ndarray  # [T, 2]
    estimate: np.ndarray  # [T, 2]
    particles: list[tuple[int, np.ndarray]]  # (step, [N, 2]) snapshots
    grid: OccupancyGrid
    landmarks: np.ndarray
    goal: np.ndarray
    plan_seconds: float
    path_length: float


def run_episode(env: Navigation2DEnv, config: NavigationConfig, seed: int,
                snapshots: int = 0) -> EpisodeRecord:
    """Plan, track and localise on the map of ``seed``; keep ``snapshots`` particle clouds
    evenly spread over the episode (for the figures)."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    tm = env.task_model
    k = env.map_config.n_landmarks
    t0 = time.perf_counter()
    path = plan_path(env.grid, env.start, env.goal, config, env.params.radius, rng)
    plan_seconds = time.perf_counter() - t0
    if config.tracker == "mppi":
        tracker = MPPITracker(path, tm, env.grid, env.params.radius, config, seed)
    else:
        tracker = PurePursuit(path, config.speed, config.lookahead, env.params.dt)
    pf = OnlineParticleFilter(tm, info["state"], config.n_particles, config.init_std, seed,
                              robot_radius=env.params.radius)
    start = info["state"].copy()
    clouds = [(0, pf.particles.numpy()[:, :2].astype(np.float32))] if snapshots else []

    def act(estimate: np.ndarray) -> np.ndarray:  # [1, 4] -> [1, 2]
        mppi = config.tracker == "mppi"
        return tracker(estimate[0] if mppi else estimate[0, :2])[None]

    def step(action: np.ndarray, _alive: np.ndarray) -> Transition:
        obs, _, terminated, truncated, info = env.step(action[0])
        estimate, particles = pf.update(action[0], obs[:k])
        if snapshots:
            clouds.append((pf.step_count, particles[:, :2].astype(np.float32)))
        return Transition(estimate[None], None, np.array([terminated]), np.array([truncated]),
                          {"true": info["state"][None, :2].copy(),
                           "collision": np.array([int(info["collision"])])})

    loop = run_episodes(lambda: start[None], step, act, 1, config.max_steps,
                        record=("true", "next_obs", "collision"))
    # [T+1, 2]: the start, then the position after every step (max_steps >= 1)
    true = np.concatenate([start[None, :2], loop.records["true"][:, 0]])
    est = np.concatenate([start[None, :2], loop.records["next_obs"][:, 0, :2]])
    collisions = int(loop.records["collision"].sum())
    success, steps = bool(loop.terminated[0]), int(loop.lengths[0])
    if snapshots:
        pick = np.unique(np.linspace(0, len(clouds) - 1, snapshots).round().astype(int))
        clouds = [clouds[i] for i in pick]
    return EpisodeRecord(
        seed=seed, success=success, steps=steps, collisions=collisions, path=path,
        true=np.asarray(true), estimate=np.asarray(est), particles=clouds, grid=env.grid,
        landmarks=env.landmarks.copy(), goal=env.goal.copy(), plan_seconds=plan_seconds,
        path_length=float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum()),
    )


# ------------------------------------------------------------------------------ figures
def _draw_map(ax, rec: EpisodeRecord) -> None:
    x0, x1, y0, y1 = rec.grid.extent
    occ = rec.grid.occupied
    f = max(1, 400 // max(occ.shape))  # upsample so the resampling cannot shift walls
    occ = occ.repeat(f, axis=0).repeat(f, axis=1)
    ax.imshow(occ, origin="lower", extent=(x0, x1, y0, y1), cmap="Greys", vmin=0, vmax=1.4,
              interpolation="none")
    ax.scatter(rec.landmarks[:, 0], rec.landmarks[:, 1], marker="^", c="tab:blue", s=40,
               label="landmarks", zorder=5)
    ax.scatter(*rec.goal, marker="*", c="tab:green", s=160, label="goal", zorder=6)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")


def figure_paths(records: list[EpisodeRecord], planner: str):
    import matplotlib.pyplot as plt

    n = len(records)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows), squeeze=False)
    for ax, rec in zip(axes.flat, records, strict=False):
        _draw_map(ax, rec)
        ax.plot(rec.path[:, 0], rec.path[:, 1], "--", c="tab:orange", lw=2, label=f"{planner} path")
        ax.plot(rec.true[:, 0], rec.true[:, 1], c="tab:red", lw=1.5, label="true trajectory")
        ax.plot(rec.estimate[:, 0], rec.estimate[:, 1], c="tab:purple", lw=1, alpha=0.8,
                label="PF estimate")
        err = np.linalg.norm(rec.true - rec.estimate, axis=1).mean()
        ax.set_title(f"seed {rec.seed}: {'reached' if rec.success else 'FAILED'} in "
                     f"{rec.steps} steps, mean loc. error {err:.2f} m", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.suptitle("Map, planned path, tracked trajectory and particle-filter estimate")
    return fig


def figure_particles(rec: EpisodeRecord):
    import matplotlib.pyplot as plt

    n = len(rec.particles)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), squeeze=False)
    for ax, (step, cloud) in zip(axes[0], rec.particles, strict=True):
        _draw_map(ax, rec)
        t = min(step, len(rec.true) - 1)
        ax.scatter(*rec.true[t], facecolors="none", edgecolors="tab:red", s=60, zorder=7,
                   label="true position")
        ax.scatter(cloud[:, 0], cloud[:, 1], s=2, c="tab:purple", alpha=0.5, zorder=8,
                   label="particles")
        spread = float(np.linalg.norm(cloud.std(0)))
        ax.set_title(f"step {step}: cloud spread {spread:.2f} m", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"Particle cloud over time (seed {rec.seed})")
    return fig


def figure_errors(records: list[EpisodeRecord]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for rec in records:
        ax.plot(np.linalg.norm(rec.true - rec.estimate, axis=1), lw=0.8, alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("localisation error (m)")
    ax.set_title(f"Particle-filter error, {len(records)} episodes")
    return fig


# ------------------------------------------------------------------------------ stage
def validate(config: NavigationConfig) -> None:
    """Value checks of the whole config (the CLI runs them before any work)."""
    if config.episodes < 1:
        raise ValueError(f"episodes must be positive, got {config.episodes}")
    if config.planner not in PLANNERS:
        raise ValueError(f"planner must be one of {', '.join(PLANNERS)}, got {config.planner!r}")
    if config.tracker not in TRACKERS:
        raise ValueError(f"tracker must be one of {', '.join(TRACKERS)}, got {config.tracker!r}")
    for name in ("n_particles", "max_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("speed", "lookahead", "plan_resolution", "rrt_time"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    if config.margin < 0 or config.init_std < 0:
        raise ValueError(f"margin and init_std must be >= 0, got {config.margin}, "
                         f"{config.init_std}")


def evaluate(config: NavigationConfig, run: Run) -> dict:
    """Run ``config.episodes`` episodes; write metrics and figures."""
    validate(config)
    if config.device != "cpu":
        log.info("navigation runs on the CPU (small per-step batches); ignoring --device %s",
                 config.device)
    seed_everything(config.seed)
    torch.set_num_threads(1)
    env = Navigation2DEnv(params=NavigationParams(), map_config=config.map,
                          max_steps=config.max_steps)
    records: list[EpisodeRecord] = []
    failures_to_plan = 0
    for i in tqdm(range(config.episodes), desc="navigation", unit="map"):
        try:
            snaps = 4 if i < config.figure_episodes else 0
            records.append(run_episode(env, config, config.seed + i, snapshots=snaps))
        except NoPathError as exc:
            failures_to_plan += 1
            log.warning("seed %d: %s", config.seed + i, exc)
    total = config.episodes
    successes = sum(r.success for r in records)
    errors = np.concatenate([np.linalg.norm(r.true - r.estimate, axis=1) for r in records])
    metrics = {
        "episodes": total,
        "planner": config.planner,
        "tracker": config.tracker,
        "success_rate": successes / total,
        "planning_failures": failures_to_plan,
        "mean_localisation_error_m": float(errors.mean()) if len(errors) else math.nan,
        "p95_localisation_error_m": float(np.percentile(errors, 95)) if len(errors) else math.nan,
        "mean_path_length_m": float(np.mean([r.path_length for r in records])),
        "mean_steps_successful": float(np.mean([r.steps for r in records if r.success]))
        if successes else math.nan,
        "mean_plan_seconds": float(np.mean([r.plan_seconds for r in records])),
        "collision_steps_per_episode": float(np.mean([r.collisions for r in records])),
    }
    run.update_metrics("evaluate", metrics)
    writer = run.writer()
    for key in ("success_rate", "mean_localisation_error_m", "mean_path_length_m"):
        writer.add_scalar(f"navigation/{key}", metrics[key], 0)
    shown = records[: max(1, config.figure_episodes)]
    run.start_fresh(*(run.figures / name for name in FIGURES))  # none of an earlier run
    if shown:
        with run.optional_artefact("the navigation figures"):
            save_figure(figure_paths(shown, config.planner), run.figures / FIGURES[0])
            save_figure(figure_particles(shown[0]), run.figures / FIGURES[1])
            save_figure(figure_errors(records), run.figures / FIGURES[2])
    log.info("navigation: success %.0f%% over %d maps, mean localisation error %.3f m",
             100 * metrics["success_rate"], total, metrics["mean_localisation_error_m"])
    return metrics


def _default() -> NavigationConfig:
    return NavigationConfig()


def _quick() -> NavigationConfig:
    return NavigationConfig(episodes=5, n_particles=200, figure_episodes=2)


TASK = register_task(Task(
    name="navigation",
    config_cls=NavigationConfig,
    presets={"default": _default, "quick": _quick},
    stages={"evaluate": evaluate},
    validate=validate,
    # one stage, which reads every setting: other settings on a run give it its own record
    sections={"evaluate": tuple(f.name for f in fields(NavigationConfig))},
    description="plan (A* / RRT*) -> pure pursuit -> particle-filter localisation on random maps",
))
