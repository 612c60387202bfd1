"""``worldplan truck <stage>``: Nguyen & Widrow's truck backer-upper, end to end.

collect       random-steering episodes from random poses (no controller needed)
train-model   the emulator: a deterministic forward model learned from those episodes
train-policy  controllers trained by backprop through time through the frozen emulator
              (and, with --policy.train-truth, through the true kinematics as a
              reference), with a widening curriculum
evaluate      a fixed seeded set of starts: learned controllers, gradient MPC through the
              emulator, LQR and a pure-pursuit cascade; metrics.json, figures, a video

Length: the truck's config, its four stages and the controllers they compare (BPTT
policies, baselines, MPC rows) share the run's loaders; figures, baselines and MPC
live in truck_figures.py, truck_baselines.py and truck_mpc.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldplan.envs.truck import (
    STRICT,
    DockingCriteria,
    Outcome,
    StartRegion,
    TruckParams,
    TruckTaskModel,
    simulate,
    step_np,
)
from worldplan.envs.truck.kinematics import at_wall, hitch_angle, in_yard
from worldplan.errors import UserError
from worldplan.experiments import truck_figures as figures
from worldplan.experiments.common import resolve_device, seed_everything
from worldplan.experiments.runs import Run
from worldplan.experiments.tasks import Task, register_task
from worldplan.experiments.truck_baselines import CascadeController, LQRController
from worldplan.experiments.truck_mpc import MPCConfig, evaluate_rows
from worldplan.planners.policy import checkpoint as policy_ckpt
from worldplan.planners.policy.bptt import BPTTConfig, Lesson, MLPPolicy, train_bptt
from worldplan.worldmodels.base import load_model
from worldplan.worldmodels.dataset import load_dataset, write_dataset
from worldplan.worldmodels.deterministic import DeterministicModel
from worldplan.worldmodels.training import TrainConfig, evaluate_horizon_error, train_model

log = logging.getLogger(__name__)

DATASET_TASK = "truck"


@dataclass
class CollectConfig:
    """Random driving: steering held at a random angle for a random number of steps."""

    episodes: int = 3000
    max_steps: int = 80
    max_hold: int = 6
    rear_x: tuple[float, float] = (2.0, 60.0)
    rear_y: tuple[float, float] = (-35.0, 35.0)
    theta1_deg: tuple[float, float] = (-120.0, 120.0)
    hitch_deg: tuple[float, float] = (-45.0, 45.0)


@dataclass
class EmulatorConfig:
    hidden: int = 64
    layers: int = 3
    dropout: float = 0.0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    npred: int = 8  # steps of the multi-step training loss
    horizon_eval: int = 30


@dataclass
class PolicyConfig:
    hidden: tuple[int, ...] = (64, 64)
    batch_size: int = 256
    lr: float = 3e-3
    lessons: int = 8  # lessons from near the dock to the widened evaluation region
    iterations_per_lesson: int = 120
    final_iterations: int = 400  # extra updates on the widest lesson
    widen: float = 1.15  # last lesson = evaluation region scaled by this
    max_horizon: int = 100
    # Also train through the true kinematics (a reference row). Off by default: it
    # doubles train-policy's time; trained on 550 of its 1,360 updates it docked only 65%.
    train_truth: bool = False
    truth_iterations_fraction: float = 1.0  # of every lesson's updates, for the reference


@dataclass
class TruckConfig:
    seed: int = 0
    device: str = "cpu"
    episodes: int = 1000  # evaluation starts
    dt: float = 1.0
    collect: CollectConfig = field(default_factory=CollectConfig)
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    mpc: MPCConfig = field(default_factory=MPCConfig)
    video_episodes: int = 4
    progress: bool = True
    threads: int = 1  # torch CPU threads: the truck's small tensors run fastest on one

    def params(self) -> TruckParams:
        if not self.dt > 0:
            raise ValueError(f"dt must be positive, got {self.dt}")
        return TruckParams(dt=self.dt, max_steps=int(round(150 / self.dt)))


def quick_config() -> TruckConfig:
    """Smoke-sized: about two minutes of CPU; docks far less often than the default."""
    return TruckConfig(
        episodes=200,
        collect=CollectConfig(episodes=1200),
        emulator=EmulatorConfig(epochs=8, lr=3e-3, batch_size=128),
        policy=PolicyConfig(lessons=6, iterations_per_lesson=30, final_iterations=150,
                            max_horizon=70, train_truth=False),
        mpc=MPCConfig(starts=20),
        video_episodes=1,
    )


# ----------------------------------------------------------------------------- collect
def collect_episodes(cfg: TruckConfig, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Random-steering episodes ``{"states": [T+1, 4], "actions": [T, 1]}`` (float32)."""
    p, c = cfg.params(), cfg.collect
    region = StartRegion(c.rear_x, c.rear_y, tuple(np.radians(c.theta1_deg)),
                         tuple(np.radians(c.hitch_deg)))
    n = c.episodes
    state = region.sample(rng, n, p)
    states, actions = [state.copy()], []
    alive = np.ones(n, bool)
    length = np.zeros(n, np.int64)
    phi = rng.uniform(-p.max_steer, p.max_steer, n)
    hold = rng.integers(1, c.max_hold + 1, n)
    for _ in range(c.max_steps):
        renew = hold <= 0
        phi[renew] = rng.uniform(-p.max_steer, p.max_steer, renew.sum())
        hold[renew] = rng.integers(1, c.max_hold + 1, renew.sum())
        hold -= 1
        nxt = step_np(state, phi, p)
        actions.append(phi.copy())
        length += alive
        state = np.where(alive[:, None], nxt, state)
        states.append(state.copy())
        ended = at_wall(nxt, p) | (np.abs(hitch_angle(nxt)) > p.jackknife_angle) | ~in_yard(nxt, p)
        alive &= ~ended
        if not alive.any():
            break
    S, A = np.stack(states, 1), np.stack(actions, 1)
    return [{"states": S[i, : length[i] + 1].astype(np.float32),
             "actions": A[i, : length[i], None].astype(np.float32)}
            for i in range(n) if length[i] >= 2]


def _threads(cfg: TruckConfig) -> None:
    if cfg.threads >= 1:
        torch.set_num_threads(cfg.threads)


def stage_collect(cfg: TruckConfig, run: Run) -> None:
    if run.resume and (run.data / "manifest.json").exists():
        log.info("data set %s is complete; keeping it", run.data)
        return
    rng = seed_everything(cfg.seed)
    episodes = collect_episodes(cfg, rng)
    # built in a temporary folder and renamed over the earlier data set (atomic)
    write_dataset(run.data, episodes, task=DATASET_TASK, dt=cfg.dt,
                  config={"collect": vars(cfg.collect), "dt": cfg.dt}, seed=cfg.seed,
                  overwrite=True)
    steps = sum(len(e["actions"]) for e in episodes)
    log.info("collected %d episodes, %d transitions", len(episodes), steps)
    run.update_metrics("collect", {"episodes": len(episodes), "transitions": steps})


# ----------------------------------------------------------------------------- emulator
def _load_data(run: Run):

    if not (run.data / "manifest.json").exists():
        raise UserError(f"no data set in {run.data}: run `worldplan truck collect` first")
    data = load_dataset(run.data)
    if data.manifest.get("task") != DATASET_TASK:
        raise UserError(f"data set {run.data} was made for task {data.manifest.get('task')!r}, "
                         f"not {DATASET_TASK!r}")
    return data


EMULATOR_FIGURES = ("emulator_training.png", "emulator_error_vs_horizon.png")
POLICY_SOURCES = ("emulator", "truth")


def emulator_dir(run: Run) -> Path:
    return run.checkpoints / "emulator"


def load_emulator(run: Run, device: torch.device):

    path = emulator_dir(run) / "best.pt"
    if not path.exists():
        raise UserError(f"no emulator at {path}: run `worldplan truck train-model` first")
    model = load_model(path, device)
    if (model.state_dim, model.action_dim) != (4, 1):
        raise UserError(f"{path} is a model of {model.state_dim}-D states and "
                         f"{model.action_dim}-D actions, not the truck's 4 and 1")
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


# held-out windows the emulator's open-loop error is measured on (evenly spaced)
HORIZON_WINDOWS = 2048


def horizon_errors(model, data, horizon: int) -> dict[str, np.ndarray]:
    """Open-loop error of the emulator on the test episodes, by
    :func:`~worldplan.worldmodels.training.evaluate_horizon_error`: the RMS hitch-position
    error (units, over x and y) and the RMS heading error (degrees, over both angles) at
    each horizon ``1..horizon``, ``[horizon]`` each, from up to :data:`HORIZON_WINDOWS`
    windows of the test split (``windows``: how many)."""
    try:
        windows = len(data.windows("test", model.ncond, horizon))
    except ValueError:
        raise UserError(f"no test episode is {horizon} steps long; collect longer episodes"
                        ) from None
    rms = evaluate_horizon_error(model, data, "test", horizon, max_windows=HORIZON_WINDOWS,
                                 per_dim=True)  # [horizon, 4]: x, y, theta0, theta1
    return {"position": np.sqrt((rms[:, :2] ** 2).sum(1)),
            "heading_deg": np.degrees(np.sqrt((rms[:, 2:] ** 2).mean(1))),
            "windows": np.array(min(windows, HORIZON_WINDOWS))}


def stage_train_model(cfg: TruckConfig, run: Run) -> None:
    _threads(cfg)

    out = emulator_dir(run)
    data = _load_data(run)  # inputs first: a command that fails on them changes nothing
    run.start_fresh(out, *(run.figures / name for name in EMULATOR_FIGURES))
    seed_everything(cfg.seed)
    e = cfg.emulator
    model = DeterministicModel(4, 1, ncond=1, hidden=e.hidden, layers=e.layers,
                               dropout=e.dropout)
    train_cfg = TrainConfig(epochs=e.epochs, batch_size=e.batch_size, lr=e.lr, npred=e.npred,
                            seed=cfg.seed, device=str(resolve_device(cfg.device)))
    history = train_model(model, data, train_cfg, checkpoint_dir=out, writer=run.writer(),
                          resume=run.resume, progress=cfg.progress, tag="emulator")
    with run.optional_artefact("the emulator's training curve"):
        figures.training_curve(history, run.figures / EMULATOR_FIGURES[0])
    model = load_emulator(run, torch.device("cpu"))
    errors = horizon_errors(model, data, cfg.emulator.horizon_eval)
    run.update_metrics("emulator", {
        "test_error_1_step": float(errors["position"][0]),
        "test_error_10_steps": float(errors["position"][min(9, len(errors["position"]) - 1)]),
        "test_error_30_steps": float(errors["position"][-1]),
        "test_heading_error_deg_30_steps": float(errors["heading_deg"][-1]),
    })
    with run.optional_artefact("the emulator's error figure"):
        figures.horizon_error(errors, run.figures / EMULATOR_FIGURES[1])


# ----------------------------------------------------------------------------- policies
def make_policy(tm: TruckTaskModel, cfg: TruckConfig) -> MLPPolicy:
    return MLPPolicy(6, 1, tm.action_low, tm.action_high, cfg.policy.hidden, features=tm.features)


def curriculum(cfg: TruckConfig, p: TruckParams, device: torch.device,
               fraction: float = 1.0) -> list[Lesson]:
    """Lessons from just in front of the dock to the evaluation region widened by
    ``widen``; each rolls out long enough to reach the wall from its farthest start.
    ``fraction`` in (0, 1] scales every lesson's updates (at least one each)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"curriculum fraction must be in (0, 1], got {fraction}")
    pc = cfg.policy
    e = StartRegion()
    w = pc.widen
    target = StartRegion(
        rear_x=(max(2.0, e.rear_x[0] / w), e.rear_x[1] * w),
        rear_y=(e.rear_y[0] * w, e.rear_y[1] * w),
        theta1=(e.theta1[0] * w, e.theta1[1] * w),
        hitch=(e.hitch[0] * w, e.hitch[1] * w),
    )
    lessons = []
    fractions = np.linspace(0.0, 1.0, pc.lessons)
    for k, frac in enumerate(fractions):
        region = target.scaled(float(frac))
        reach = int(math.ceil(2.2 * region.rear_x[1] / abs(p.speed * p.dt))) + 5
        horizon = min(pc.max_horizon, reach)
        its = pc.iterations_per_lesson + (pc.final_iterations if k == len(fractions) - 1 else 0)
        its = max(1, int(round(its * fraction)))

        def sample(rng: np.random.Generator, n: int, region=region) -> torch.Tensor:
            return torch.as_tensor(region.sample(rng, n, p), dtype=torch.float32, device=device)

        lessons.append(Lesson(sample, horizon, its, name=f"lesson{k}"))
    return lessons


def policy_path(run: Run, source: str) -> Path:
    return run.checkpoints / f"policy_{source}.pt"


def train_one_policy(cfg: TruckConfig, run: Run, source: str, dynamics, device) -> dict:
    p = cfg.params()
    tm = TruckTaskModel(p)
    seed_everything(cfg.seed)
    policy = make_policy(tm, cfg).to(device)
    rng = np.random.default_rng(cfg.seed + (1 if source == "truth" else 0))
    pc = cfg.policy
    fraction = pc.truth_iterations_fraction if source == "truth" else 1.0
    history = train_bptt(policy, tm.stop_at_wall(dynamics), curriculum(cfg, p, device, fraction),
                         BPTTConfig(batch_size=pc.batch_size, lr=pc.lr), rng, cost=tm.cost,
                         terminal_cost=tm.terminal_cost, writer=run.writer(),
                         tag=f"policy_{source}", progress=cfg.progress)
    policy_ckpt.save_policy(policy_path(run, source), policy, "truck",
                {"source": source, "history": history})
    return history


def load_policy(run: Run, source: str, cfg: TruckConfig) -> MLPPolicy:
    tm = TruckTaskModel(cfg.params())
    path = policy_path(run, source)
    policy, _ = policy_ckpt.load_policy(path, "truck", lambda config, meta: make_policy(tm, cfg))
    return policy


def stage_train_policy(cfg: TruckConfig, run: Run) -> None:
    _threads(cfg)
    device = resolve_device(cfg.device)
    tm = TruckTaskModel(cfg.params())
    sources = ["emulator"] + (["truth"] if cfg.policy.train_truth else [])
    emulator = load_emulator(run, device)  # inputs first: a failure changes nothing
    # every source's policy goes: a --no-policy.train-truth run must not keep the truth one
    run.start_fresh(*(policy_path(run, s) for s in POLICY_SOURCES),
                run.figures / "policy_training.png")
    histories = {}
    for source in sources:
        path = policy_path(run, source)
        if path.exists():  # only when continuing an interrupted train-policy
            log.info("policy %s was trained before the interruption; keeping it", path)
            histories[source] = policy_ckpt.read_policy(path, "truck")["meta"].get("history", {})
            continue
        dynamics = emulator.step if source == "emulator" else tm.step
        histories[source] = train_one_policy(cfg, run, source, dynamics, device)
    run.update_metrics("train-policy", {
        source: {"updates": len(h.get("cost", [])),
                 "final_cost": float(np.mean(h["cost"][-20:])) if len(h.get("cost", [])) else None}
        for source, h in histories.items()})
    with run.optional_artefact("the policy training figure"):
        figures.policy_training(histories, run.figures / "policy_training.png")


# ----------------------------------------------------------------------------- evaluate
def evaluation_starts(cfg: TruckConfig) -> np.ndarray:
    """The seeded evaluation set: fixed for a given ``seed`` and ``episodes``."""
    if cfg.episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {cfg.episodes}")
    rng = np.random.default_rng(10_000 + cfg.seed)
    return StartRegion().sample(rng, cfg.episodes, cfg.params())


def torch_controller(policy: torch.nn.Module):
    def act(states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return policy(torch.as_tensor(states, dtype=torch.float32)).numpy()[:, 0]
    return act


def summarise(tm: TruckTaskModel, result, criteria: DockingCriteria | None = None) -> dict:
    jack = result.outcome == Outcome.JACKKNIFE
    at_wall_ = result.outcome == Outcome.WALL
    docked = tm.docked(result.final, jack, criteria) & at_wall_
    strict = tm.docked(result.final, jack, STRICT) & at_wall_
    pos, ang = tm.docking_errors(result.final)
    return {
        "success_rate": float(docked.mean()),
        "strict_success_rate": float(strict.mean()),
        "final_position_error": float(pos.mean()),
        "final_angle_error_deg": float(ang.mean()),
        "steps_to_dock": float(result.steps[docked].mean()) if docked.any() else None,
        "jackknife_rate": float(jack.mean()),
        "out_of_yard_rate": float((result.outcome == Outcome.OUT_OF_YARD).mean()),
        "timeout_rate": float((result.outcome == Outcome.TIMEOUT).mean()),
        "episodes": int(len(docked)),
    }


def stage_evaluate(cfg: TruckConfig, run: Run) -> None:
    _threads(cfg)
    p = cfg.params()
    tm = TruckTaskModel(p)
    starts = evaluation_starts(cfg)
    controllers: dict[str, object] = {}
    for source in POLICY_SOURCES:
        if policy_path(run, source).exists():
            controllers[f"bptt_{source}"] = torch_controller(load_policy(run, source, cfg))
    if not controllers:
        raise UserError(
            f"no policy in {run.checkpoints}: run `worldplan truck train-policy`")
    emulator = load_emulator(run, torch.device("cpu")) if cfg.mpc.enabled else None
    # inputs loaded; now this record's figures and video go (the controller they show, the
    # methods they compare may have changed)
    run.start_fresh(*run.figures.glob("success_by_method.png"),
                *run.figures.glob("trajectories_*.png"), *run.videos.glob("docking_*.mp4"))
    controllers["lqr"] = LQRController(p)
    controllers["cascade"] = CascadeController(p)
    results, metrics = {}, {}
    for name, ctrl in controllers.items():
        results[name] = simulate(starts, ctrl, p)
        metrics[name] = summarise(tm, results[name])
        log.info("%-14s docked %.1f%% (strict %.1f%%)", name, 100 * metrics[name]["success_rate"],
                 100 * metrics[name]["strict_success_rate"])
    if cfg.mpc.enabled:  # MPC through the emulator (experiments.truck_mpc)

        policy = load_policy(run, "emulator", cfg) if policy_path(run, "emulator").exists() \
            else None
        mpc_results, mpc_metrics = evaluate_rows(
            cfg.mpc.rows, tm, emulator, policy,
            starts[: cfg.mpc.starts], cfg.mpc, cfg.seed, cfg.progress, summarise)
        results.update(mpc_results)
        metrics.update(mpc_metrics)
    metrics["_setup"] = {"episodes": len(starts), "seed": cfg.seed, "dt": p.dt,
                         "yard": [list(p.yard_x), list(p.yard_y)],
                         "start_region": {k: list(v) for k, v in vars(StartRegion()).items()}}
    run.update_metrics("evaluate", metrics)
    with run.optional_artefact("the success figure"):
        figures.success_bars(metrics, run.figures / "success_by_method.png")
    main = "bptt_emulator" if "bptt_emulator" in controllers else next(iter(controllers))
    with run.optional_artefact("the trajectory figure"):
        figures.trajectory_grid(controllers[main], p, run.figures / f"trajectories_{main}.png")
    with run.optional_artefact("the docking video"):
        video = figures.docking_video(controllers[main], p, starts[: cfg.video_episodes],
                                      run.videos / f"docking_{main}.mp4")
        run.update_metrics("evaluate", {"_video": video})


def validate_config(cfg: TruckConfig) -> None:
    """Value ranges checked before any stage works (the CLI's skeleton calls this)."""
    cfg.params()
    for name, value in (("episodes", cfg.episodes), ("collect.episodes", cfg.collect.episodes),
                        ("collect.max_steps", cfg.collect.max_steps),
                        ("collect.max_hold", cfg.collect.max_hold),
                        ("emulator.epochs", cfg.emulator.epochs),
                        ("emulator.batch_size", cfg.emulator.batch_size),
                        ("emulator.npred", cfg.emulator.npred),
                        ("emulator.horizon_eval", cfg.emulator.horizon_eval),
                        ("policy.batch_size", cfg.policy.batch_size),
                        ("policy.lessons", cfg.policy.lessons),
                        ("policy.max_horizon", cfg.policy.max_horizon),
                        ("mpc.starts", cfg.mpc.starts), ("mpc.horizon", cfg.mpc.horizon)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, lo, hi in (("collect.rear_x", *cfg.collect.rear_x),
                         ("collect.rear_y", *cfg.collect.rear_y),
                         ("collect.theta1_deg", *cfg.collect.theta1_deg),
                         ("collect.hitch_deg", *cfg.collect.hitch_deg)):
        if not lo <= hi:
            raise ValueError(f"{name} must be (low, high) with low <= high, got ({lo}, {hi})")
    if not 0 < cfg.policy.truth_iterations_fraction <= 1:
        raise ValueError("policy.truth_iterations_fraction must be in (0, 1], got "
                         f"{cfg.policy.truth_iterations_fraction}")


TASK = register_task(Task(
    name="truck",
    config_cls=TruckConfig,
    presets={"default": TruckConfig, "quick": quick_config},
    stages={"collect": stage_collect, "train-model": stage_train_model,
            "train-policy": stage_train_policy, "evaluate": stage_evaluate},
    description=(__doc__ or "").split("\n\nLength:")[0],
    validate=validate_config,
    resumable=("collect", "train-model", "train-policy"),
    # dt and the seed, listed by none, are read by every stage
    sections={"collect": ("collect",), "train-model": ("emulator",),
              "train-policy": ("policy",),
              "evaluate": ("episodes", "mpc", "video_episodes")},
))
