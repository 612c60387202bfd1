"""``worldplan highway <stage>``: learning to drive in dense traffic from observation (PPUU).

collect       simulate IDM + MOBIL traffic, record every car, add camera-tracker noise,
              recover the tracks with the Kalman RTS smoother (filters/), extract actions
              by inverting the kinematic update, render each car's views: one episode per
              car, split 80/10/10 by car (worldmodels' data set format)
train-model   the image + state world models (worldmodels.images.ImageModel): a
              deterministic one, then a stochastic one (cVAE, z-dropout) warm-started from it
train-policy  1-step imitation; VG (deterministic model), SVG (stochastic, z from the
              prior), MPUR (SVG + the MC-dropout uncertainty hinge), MPER (posterior z,
              expert-regularised), by backprop through time through the frozen models
evaluate      one episode per held-out car among the recorded (non-reactive) traffic: the
              car replays its first ``ncond`` steps, then the method drives; success rate,
              mean distance, mean uncertainty per method in metrics.json; a video

See docs/highway.md for the measured figures and what is not reached.

Length: the highway's config, its four stages and the wiring of five learners share the
config checks and the loaders of data sets, models and policies; the reusable parts
live in envs/highway/, worldmodels/, planners/policy/ and the highway_* modules.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldplan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from worldplan.envs.highway import Recording, record_traffic
from worldplan.envs.highway.costs import CostConfig, image_costs_torch, masks_torch
from worldplan.envs.highway.counterfactual import DriveNoise, counterfactual_drives
from worldplan.envs.highway.episodes import build_episodes, headings_from_velocity
from worldplan.envs.highway.kinematics import actions_from_states, states_from_tracks
from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.envs.highway.privileged import IDMDriver
from worldplan.envs.highway.render import View
from worldplan.envs.highway.traffic import TrafficConfig
from worldplan.experiments import highway_eval as he
from worldplan.experiments.common import resolve_device, save_figure, seed_everything
from worldplan.experiments.highway_eval import HeldOut, eval_recording
from worldplan.experiments.highway_mpc import SceneCacheMPC
from worldplan.experiments.highway_plan import (
    OFFSET_DIM,
    LastSteps,
    fit_hinge,
    head_pairs,
    pair_sampler,
    plan_world_fn,
    scene_pool,
    unusual_actions,
    variances_under,
)
from worldplan.experiments.runs import Run
from worldplan.experiments.tasks import Task
from worldplan.filters import KalmanFilter
from worldplan.planners.policy.checkpoint import (
    check_policy,
    load_policy,
    read_policy,
    save_policy,
)
from worldplan.planners.policy.imitation import ContextPolicy, train_imitation
from worldplan.planners.policy.imitation import ImitationConfig as ImCfg
from worldplan.planners.policy.mper import MPERConfig, train_mper
from worldplan.planners.policy.mpur import (
    MPURConfig,
    expert_uncertainty_stats,
    policy_rollout,
    train_mpur,
)
from worldplan.worldmodels.base import load_model
from worldplan.worldmodels.dataset import load_dataset, split_episode_ids, write_dataset
from worldplan.worldmodels.ego_motion import EgoMotionImageModel
from worldplan.worldmodels.images import ImageModel, to_unit
from worldplan.worldmodels.plan_uncertainty import PlanHeadEnsemble, train_plan_head
from worldplan.worldmodels.training import TrainConfig, evaluate_horizon_error, train_model
from worldplan.worldmodels.uncertainty import auroc, mc_uncertainty

log = logging.getLogger(__name__)

DATASET_TASK = "highway"
RECORDING_FILE = "recording.npz"


# ----------------------------------------------------------------------------- configs
@dataclass
class CollectConfig:
    """Traffic recording, tracker noise and smoothing."""

    record_seconds: float = 240.0
    warmup_seconds: float = 60.0
    max_cars: int = 300  # episodes in the data set (the cars that cross the whole road)
    noise_long: float = 0.3  # m, tracker noise along the road (std)
    noise_lat: float = 0.15  # m, across
    jerk_long: float = 0.5  # smoother's white-jerk intensity along the road, m^2/s^5
    jerk_lat: float = 0.005  # across (tuned on a quick recording: docs/highway.md)
    # the 4th, off-road channel: leaving the road ends an episode, so the cost sees it
    offroad_channel: bool = True
    # counterfactual drives (envs/highway/counterfactual.py): each recorded car re-driven
    # with perturbed actions among the non-reactive recorded traffic, for the world model
    # only; 0 = the recorded episodes alone (PPUU's purely observational data)
    drives_per_car: int = 3
    drive_seconds: float = 10.0
    drive_accel_std: float = 0.5  # m/s^2, OU perturbation of the recorded acceleration
    drive_steer_std: float = 0.0015  # 1/m, of the recorded steering
    drive_tau: float = 2.0  # s, the perturbation's time constant


@dataclass
class ModelConfig:
    """The world models (ImageModel): context length, sizes, training steps."""

    ncond: int = 2
    npred: int = 3
    hidden: int = 64
    channels: tuple[int, ...] = (8, 16, 16)
    dropout: float = 0.1
    z_dim: int = 8
    beta: float = 0.05
    p_z: float = 0.5
    z_dropout: str = "zero"
    det_steps: int = 1500
    sto_steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    horizon_error: bool = True  # measure the open-loop test error per horizon
    # exact ego motion (worldmodels.ego_motion): the network predicts the other cars only,
    # the ego moves by the kinematic update and a differentiable warp; False = PPUU's
    # ImageModel, which learns the ego's motion too
    ego_motion: bool = True
    # how the ego-motion model moves the other cars: "cost-volume" (each keeps the
    # velocity it showed in the context, measured by block matching) or "global" (one
    # learned flow for all); see worldmodels/ego_motion.py for the measured difference
    flow_prior: str = "cost-volume"


@dataclass
class PolicyConfig:
    """Policy learning (all methods share the policy network)."""

    methods: tuple[str, ...] = ("imitation", "oracle", "vg", "svg", "mpur", "mper")
    seeds: tuple[int, ...] = (0, 1, 2)  # policy-training seeds (one data set and model)
    imitation_steps: int = 3000
    bptt_steps: int = 300
    batch_size: int = 8
    horizon: int = 10
    lr: float = 1e-4
    lam: float = 0.5  # MPUR's uncertainty weight
    mc_samples: int = 2
    lane_weight: float = 0.2
    # "max" (PPUU) or "front-rear" (the nearest car ahead and the nearest behind both
    # count); experiments/highway.py _cost_fn
    proximity: str = "max"
    hidden: int = 64
    channels: tuple[int, ...] = (8, 8, 16)
    # context frames the policy sees (0 = the world model's ncond); the world models are
    # fed the last ncond of them
    ncond: int = 0
    # "oracle": BPTT through the true replayed future (envs/highway/oracle.py), the check
    # of the objective and the learner with a perfect model
    oracle_steps: int = 800  # 800 x 8 windows x 3 s: 868 s on this CPU at load 4-5
    oracle_horizon: int = 30
    oracle_batch_size: int = 8
    oracle_lr: float = 3e-4
    # the oracle learner first drives a random 0..oracle_burn_in steps through the oracle
    # without a graph, then takes the gradient over oracle_horizon steps: it then also
    # learns from the states its own driving leads to (planners/policy/mpur.py)
    oracle_burn_in: int = 0
    # the same for the learners through a world model (vg, svg, mpur)
    burn_in: int = 0
    # the world vg / svg / mpur learn through: "trunk" = the world models rolled out in
    # the BPTT loop, U = their MC-dropout variance (local_uncertainty); "plan-head" = the
    # stochastic trunk's scene cached per window plus a residual head ensemble that sees
    # the ego's offset from the recorded pose, U = PPUU's z-scored hinge of its variances
    # (experiments/highway_plan.py); vg then uses z = 0
    world: str = "trunk"
    # the policy the model-based learners start from ("" = the seed's imitation policy;
    # a method name continues from that method's checkpoint of the seed)
    init_from: str = ""
    head_windows: int = 400  # windows (half counterfactual drives) for the head's data
    head_steps: int = 800
    head_horizon: int = 30  # steps of each window of the head's data
    head_members: int = 4
    head_width: int = 8
    # windows whose trunk scenes are rolled out once per learner (the scene does not
    # depend on the policy; experiments/highway_plan.py scene_pool)
    scene_windows: int = 384
    # BPTT: no gradient through the policy's image input (halves the backward pass;
    # the cost and the state inputs still carry it); planners/policy/mpur.py
    detach_frames: bool = True
    # of the frames before the last, the policy sees only these channels (the other
    # cars; lanes, ego and off-road of the last frame suffice): a 10-frame context then
    # costs the first convolution 13 input channels instead of 40. () = all channels
    history_channels: tuple[int, ...] = (1,)
    # the policy also sees each other car's speed relative to the ego (block matching
    # between its last two frames; planners/policy/imitation.py). Off by default: it did
    # not help imitation (seeds 0 / 1: 20.0 / 13.3 % against 26.7 / 10.0 %; docs/highway.md)
    relative_motion: bool = False


@dataclass
class EvalConfig:
    ncond: int = 20  # steps the ego replays its own recording before the policy drives
    max_steps: int = 800
    methods: tuple[str, ...] = ("no-action", "expert-replay", "idm", "idm-watch", "oracle",
                                "imitation", "vg", "svg", "mpur", "mper", "mpc")
    # held-out cars: the training recording's test split plus fresh recordings made with
    # these seeds (never the training seed), each cached in the run's data folder
    test_split: bool = True
    eval_seeds: tuple[int, ...] = (1001, 1002)
    eval_record_seconds: float = 150.0
    eval_warmup_seconds: float = 60.0
    eval_cars: int = 150  # per fresh recording
    uncertainty: bool = True  # MC-dropout U of the stochastic model along the episodes
    mc_samples: int = 2
    uncertainty_every: int = 10  # steps between MC-dropout uncertainty measurements
    video: bool = True
    mpc_horizon: int = 5  # gradient MPC through the stochastic model (z = 0)
    mpc_iterations: int = 5
    mpc_lr: float = 0.1
    mpc_u_weight: float = 0.1  # weight of the MC-dropout uncertainty in MPC's cost
    # compute the other cars' predicted motion once per plan, re-warp it per inner
    # iteration (experiments/highway_mpc.py; the speed-up is in benchmarks/bench_highway.py)
    mpc_cache: bool = True
    # gradient MPC costs seconds per step for a batch of egos: it drives only the first
    # mpc_cars cars of each held-out set (its row says how many episodes)
    mpc_cars: int = 20


@dataclass
class HighwayConfig:
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch CPU threads (small convolutions run fastest on one thread)
    episodes: int = 0  # evaluation episodes (held-out cars); 0 = all of them
    collect: CollectConfig = field(default_factory=CollectConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


def default_config() -> HighwayConfig:
    return HighwayConfig()


def quick_config() -> HighwayConfig:
    return HighwayConfig(
        collect=CollectConfig(record_seconds=75.0, warmup_seconds=40.0, max_cars=40),
        model=ModelConfig(ncond=2, npred=2, hidden=64, channels=(8, 16, 16), z_dim=8,
                          det_steps=15, sto_steps=15, batch_size=16, horizon_error=False),
        policy=PolicyConfig(seeds=(0,), imitation_steps=60, bptt_steps=8, batch_size=8, horizon=4,
                            mc_samples=2, hidden=64, channels=(8, 8, 16), oracle_steps=30,
                            oracle_horizon=10, oracle_batch_size=8),
        evaluate=EvalConfig(max_steps=800, mc_samples=2, uncertainty_every=10, video=True,
                            mpc_horizon=3, mpc_iterations=2, eval_seeds=(1001,),
                            eval_record_seconds=70.0, eval_warmup_seconds=30.0, eval_cars=6,
                            mpc_cars=4,
                            # gradient MPC costs minutes even on 4 cars per set: tested on
                            # its own (tests/test_highway_mpc.py)
                            methods=("no-action", "expert-replay", "idm", "oracle",
                                     "imitation", "vg", "svg", "mpur", "mper")))


# ----------------------------------------------------------------------------- smoothing
def tracker_noise(pos: np.ndarray, valid: np.ndarray, sigma: tuple[float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Camera-tracker detections: positions ``[T, C, 2]`` plus white Gaussian noise of
    std ``sigma`` (along, across the road) on the valid entries; NaN elsewhere."""
    noise = rng.standard_normal(pos.shape) * np.asarray(sigma)
    out = pos + noise
    out[~valid] = np.nan
    return out


def smooth_tracks(detections: np.ndarray, valid: np.ndarray, dt: float,
                  jerk: tuple[float, float], sigma: tuple[float, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """RTS-smooth every car's track with a constant-acceleration (white jerk) model per
    axis: detections ``[T, C, 2]`` -> positions and velocities ``[T, C, 2]`` (NaN where
    invalid). All C tracks go through ``worldplan.filters.KalmanFilter`` as one batch, left-aligned
    and padded with NaN (missing) rows."""

    steps, n_cars = valid.shape
    first = np.argmax(valid, axis=0)
    length = valid.sum(0)
    seen = np.flatnonzero(length > 0)
    span = int(length.max())
    z = np.full((len(seen), span, 2), np.nan)
    for k, c in enumerate(seen):
        z[k, :length[c]] = detections[first[c]:first[c] + length[c], c]
    f1 = np.array([[1.0, dt, dt * dt / 2], [0.0, 1.0, dt], [0.0, 0.0, 1.0]])
    q1 = np.array([[dt**5 / 20, dt**4 / 8, dt**3 / 6], [dt**4 / 8, dt**3 / 3, dt**2 / 2],
                   [dt**3 / 6, dt**2 / 2, dt]])
    zero = np.zeros((3, 3))
    transition = np.block([[f1, zero], [zero, f1]])
    cov = np.block([[jerk[0] * q1, zero], [zero, jerk[1] * q1]])
    obs = np.zeros((2, 6))
    obs[0, 0] = obs[1, 3] = 1.0
    init = np.zeros((len(seen), 6))
    init[:, 0], init[:, 3] = z[:, 0, 0], z[:, 0, 1]
    init[:, 1] = 6.0
    kf = KalmanFilter(transition_matrix=transition, observation_matrix=obs,
                      transition_covariance=cov, observation_covariance=np.diag(np.square(sigma)),
                      initial_state_mean=init,
                      initial_state_covariance=np.diag([1.0, 25.0, 9.0, 1.0, 4.0, 4.0]))
    means, _ = kf.smooth(z)
    pos = np.full((steps, n_cars, 2), np.nan)
    vel = np.full((steps, n_cars, 2), np.nan)
    for k, c in enumerate(seen):
        sl = slice(first[c], first[c] + length[c])
        pos[sl, c] = means[k, :length[c]][:, [0, 3]]
        vel[sl, c] = means[k, :length[c]][:, [1, 4]]
    return pos, vel


def extraction_errors(true_pos: np.ndarray, est_pos: np.ndarray, dt: float,
                      min_speed: float = 1.0) -> dict[str, float]:
    """RMS error of actions extracted from ``est_pos`` against those from ``true_pos``
    (both ``[N, T+2, 2]`` tracks), on steps where the true car moves faster than
    ``min_speed`` (its steering is unobservable when still)."""
    a_true = actions_from_states(states_from_tracks(true_pos, dt), dt)
    a_est = actions_from_states(states_from_tracks(est_pos, dt), dt)
    speed = np.linalg.norm(np.diff(true_pos, axis=-2) / dt, axis=-1)[..., :-1]
    m = speed > min_speed
    err = a_est - a_true
    return {"accel_rmse": float(np.sqrt(np.mean(err[..., 0][m] ** 2))),
            "steer_rmse": float(np.sqrt(np.mean(err[..., 1][m] ** 2))),
            "accel_true_std": float(a_true[..., 0][m].std()),
            "steer_true_std": float(a_true[..., 1][m].std())}


# ----------------------------------------------------------------------------- collect
def collect(config: HighwayConfig, run: Run) -> None:
    """Record traffic, track it, smooth it, and write one episode per car."""
    _set_threads(config)

    c = config.collect
    rng = seed_everything(config.seed)
    traffic_cfg = TrafficConfig()
    dt = traffic_cfg.dt
    t_start = time.perf_counter()
    rec = record_traffic(int(round(c.record_seconds / dt)), traffic_cfg,
                         warmup=int(round(c.warmup_seconds / dt)), seed=config.seed)
    run.data.mkdir(parents=True, exist_ok=True)
    rec.save(run.data / RECORDING_FILE)
    t_sim = time.perf_counter() - t_start
    stats = traffic_statistics(rec)
    log.info("traffic: %s", stats)

    cars = rec.complete_cars()[: c.max_cars]
    if len(cars) < 10:
        raise ValueError(f"only {len(cars)} cars crossed the whole road; record longer "
                         f"(collect.record_seconds = {c.record_seconds})")
    sigma = (c.noise_long, c.noise_lat)
    detections = tracker_noise(rec.pos, rec.valid, sigma, rng)
    t0 = time.perf_counter()
    sm_pos, sm_vel = smooth_tracks(detections, rec.valid, dt, (c.jerk_long, c.jerk_lat), sigma)
    t_smooth = time.perf_counter() - t0

    # action-extraction error with and without smoothing, on the selected cars
    errors = {"raw": [], "smoothed": [], "truth": []}
    for car in cars:
        a, b = rec.span(car)
        errors["truth"].append(rec.pos[a:b + 1, car])
        errors["raw"].append(detections[a:b + 1, car])
        errors["smoothed"].append(sm_pos[a:b + 1, car])
    m = min(len(x) for x in errors["truth"])
    truth = np.stack([x[:m] for x in errors["truth"]])
    extraction = {
        "without_smoothing": extraction_errors(truth, np.stack([x[:m] for x in errors["raw"]]), dt),
        "with_smoothing": extraction_errors(truth, np.stack([x[:m] for x in errors["smoothed"]]),
                                            dt),
    }
    log.info("action extraction error: %s", extraction)

    view = View(offroad=c.offroad_channel)
    heading = headings_from_velocity(np.nan_to_num(sm_vel))
    t0 = time.perf_counter()
    episodes = build_episodes(np.nan_to_num(sm_pos), heading, rec.valid, rec.size, cars,
                              rec.road, dt, view, CostConfig())
    t_render = time.perf_counter() - t0
    # split by car: a car's counterfactual drives go to the split of its recorded episode
    split_ids = split_episode_ids(len(episodes), {"train": 0.8, "val": 0.1, "test": 0.1},
                                  config.seed)
    split_of_car = {int(episodes[i]["car"]): name for name, ids in split_ids.items()
                    for i in ids}
    drives: list[dict] = []
    t0 = time.perf_counter()
    if c.drives_per_car > 0:
        noise = DriveNoise(c.drive_accel_std, c.drive_steer_std, c.drive_tau)
        drives = counterfactual_drives(rec, np.array(sorted(split_of_car)), c.drives_per_car,
                                       int(round(c.drive_seconds / dt)), rng, noise, view,
                                       CostConfig(), min_steps=10)
        for j, d in enumerate(drives):
            split_ids[split_of_car[d["car"]]].append(len(episodes) + j)
    t_drives = time.perf_counter() - t0
    every = episodes + drives
    meta = {"car_ids": [int(e["car"]) for e in every],
            "start_steps": [int(e["start"]) for e in every],
            "kinds": ["recorded"] * len(episodes) + ["drive"] * len(drives),
            "recording": RECORDING_FILE, "view": dataclasses.asdict(view),
            "config": dataclasses.asdict(config)}
    path = write_dataset(run.data / "dataset",
                         [{k: e[k] for k in ("states", "actions", "images", "costs")}
                          for e in every],
                         task=DATASET_TASK, dt=dt, config=meta, seed=config.seed,
                         split_ids=split_ids, overwrite=True)
    frames = int(sum(len(e["images"]) for e in episodes))
    collisions = float(np.mean([e["collision"].max() > 0.5 for e in episodes]))
    outcomes = [d["outcome"] for d in drives]
    metrics = {"cars_recorded": int(rec.cars), "episodes": len(episodes), "frames": frames,
               "expert_collision_rate": collisions, "traffic": stats,
               "action_extraction": extraction,
               "counterfactual_drives": {
                   "drives": len(drives), "frames": int(sum(len(d["images"]) for d in drives)),
                   **{f"{o}_rate": float(np.mean([x == o for x in outcomes])) if drives
                      else 0.0 for o in ("collision", "offroad", "success", "timeout")}},
               "seconds": {"simulate": t_sim, "smooth": t_smooth, "render": t_render,
                           "drives": t_drives},
               "dataset": str(path)}
    run.update_metrics("collect", metrics)
    _collect_figures(rec, truth, np.stack([x[:m] for x in errors["raw"]]),
                     np.stack([x[:m] for x in errors["smoothed"]]), dt, run)
    log.info("collect: %d episodes, %d frames -> %s", len(episodes), frames, path)


def traffic_statistics(rec: Recording) -> dict[str, float]:
    """Speeds inside the evaluation segment, density and lane changes of a recording."""
    road = rec.road
    seen = rec.valid.any(0)
    inside = rec.valid & (rec.pos[..., 0] > road.before) & (rec.pos[..., 0] < road.segment_end)
    speeds = rec.speed[inside]
    lanes = road.lane_of(rec.pos[..., 1])
    changes = (np.diff(lanes, axis=0) != 0) & rec.valid[1:] & rec.valid[:-1]
    return {"mean_speed": float(speeds.mean()), "speed_std": float(speeds.std()),
            "stopped_fraction": float((speeds < 0.5).mean()),
            "mean_cars_on_road": float(rec.valid.sum(1).mean()),
            "lane_changes_per_car": float(changes.sum() / max(int(seen.sum()), 1)),
            "length_range_m": [float(rec.size[seen, 0].min()), float(rec.size[seen, 0].max())],
            "width_range_m": [float(rec.size[seen, 1].min()), float(rec.size[seen, 1].max())]}


def _collect_figures(rec: Recording, truth: np.ndarray, raw: np.ndarray, smoothed: np.ndarray,
                     dt: float, run: Run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    lanes = rec.road.lane_of(rec.pos[..., 1])
    t_idx, c_idx = np.nonzero(rec.valid & (lanes == 2))
    sc = ax[0].scatter(t_idx * dt, rec.pos[t_idx, c_idx, 0], c=rec.speed[t_idx, c_idx], s=0.3,
                       cmap="RdYlGn", vmin=0, vmax=12)
    fig.colorbar(sc, ax=ax[0], label="speed (m/s)")
    ax[0].set(xlabel="time (s)", ylabel="x (m)", title="lane 2: space-time (stop-and-go waves)")
    inside = rec.valid & (rec.pos[..., 0] > rec.road.before)
    ax[1].hist(rec.speed[inside], bins=60, color="tab:blue")
    ax[1].set(xlabel="speed (m/s)", ylabel="count", title="speeds in the segment")
    save_figure(fig, run.figures / "traffic.png")

    fig, ax = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    k = 0
    for est, label in ((raw, "from raw detections"), (smoothed, "from RTS-smoothed tracks"),
                       (truth, "true")):
        acts = actions_from_states(states_from_tracks(est[k], dt), dt)
        tt = np.arange(len(acts)) * dt
        ax[0].plot(tt, acts[:, 0], label=label, lw=0.8)
        ax[1].plot(tt, acts[:, 1], label=label, lw=0.8)
    ax[0].set(ylabel="a (m/s^2)", ylim=(-8, 8), title="actions extracted for one car")
    ax[1].set(ylabel="b (1/m)", ylim=(-0.25, 0.25), xlabel="time (s)")
    ax[0].legend(fontsize=8)
    save_figure(fig, run.figures / "action_extraction.png")


# ----------------------------------------------------------------------------- shared
def _set_threads(config: HighwayConfig) -> None:
    if config.threads < 1:
        raise ValueError(f"threads must be >= 1, got {config.threads}")
    torch.set_num_threads(config.threads)


POLICY_METHODS = ("imitation", "oracle", "vg", "svg", "mpur", "mper")


def _privileged() -> dict:

    # drivers that see the true replayed traffic: the harness's ceiling (docs/highway.md)
    return {"idm-keep-lane": IDMDriver(copy_lanes=False),
            "idm": IDMDriver(),
            "idm-watch": IDMDriver(time_gap=0.6, watch_follower=True)}


PRIVILEGED = _privileged()
METHODS = ("no-action", "expert-replay", *PRIVILEGED, *POLICY_METHODS, "mpc")
MODEL_DIRS = {"deterministic": "model-deterministic", "stochastic": "model-stochastic"}
# which world model each learned method trains through (None: no model)
METHOD_MODEL = {"imitation": None, "oracle": None, "vg": "deterministic", "svg": "stochastic",
                "mpur": "stochastic", "mper": "stochastic"}


def _check_methods(methods: tuple[str, ...], allowed: tuple[str, ...], where: str) -> None:
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown method(s) {', '.join(unknown)}; "
                         f"available: {', '.join(allowed)}")
    if not methods:
        raise ValueError(f"{where}: no method given")


def _open_dataset(run: Run):
    """The run's data set; a clear error when it is missing or made for another task."""

    path = run.data / "dataset"
    ds = load_dataset(path, check_finite=False)
    if ds.task != DATASET_TASK:
        raise ValueError(f"data set {path} was made for task {ds.task!r}, not {DATASET_TASK!r}")
    if ds.image_shape is None:
        raise ValueError(f"data set {path} holds no images; run `worldplan highway collect`")
    return ds


def _recorded_ids(ds, split: str) -> list[int]:
    """Episode ids of ``split`` that are recorded cars (not counterfactual drives)."""
    kinds = ds.manifest["generator"]["config"].get("kinds")
    ids = ds.episode_ids(split)
    return ids if kinds is None else [i for i in ids if kinds[i] == "recorded"]


def _model_path(run: Run, which: str) -> Path:
    return run.checkpoints / MODEL_DIRS[which] / "best.pt"


def _load_world_model(run: Run, which: str, ds, device: torch.device):
    """A trained ImageModel of this run, checked against the data set."""

    path = _model_path(run, which)
    if not path.is_file():
        raise CheckpointError(f"{which} world model not found: {path} "
                              "(run `worldplan highway train-model` first)")
    model = load_model(path, device)
    if not isinstance(model, ImageModel):
        raise CheckpointError(f"{path} holds a {model.kind}, expected an ImageModel")
    if tuple(model.image_shape) != tuple(ds.image_shape) or model.state_dim != ds.state_dim:
        raise CheckpointError(f"{path} was trained on images {list(model.image_shape)} and "
                              f"{model.state_dim}-D states; the data set has "
                              f"{list(ds.image_shape)} and {ds.state_dim}-D states")
    if which == "stochastic" and not model.z_dim:
        raise CheckpointError(f"{path} is not a stochastic model (z_dim = 0)")
    return model


PROXIMITY_FORMS = ("max", "front-rear")
WORLDS = ("trunk", "plan-head")


def _cost_fn(view: View, weight_lane: float, proximity: str = "max"):
    """The policy cost ``(images [B, C, H, W], states [B, 4]) -> [B]``: proximity + lane x
    ``weight_lane`` + off-road. ``proximity``: ``"max"`` is PPUU's max over the whole
    mask (only the nearest car counts); ``"front-rear"`` adds the max over the half of
    the mask ahead of the ego's centre and the max over the half behind, so a follower
    closing in is not hidden by a nearer leader (and the reverse)."""

    if proximity not in PROXIMITY_FORMS:
        raise ValueError(f"proximity must be one of {PROXIMITY_FORMS}, got {proximity!r}")
    fwd = torch.as_tensor(np.ascontiguousarray(view.pixel_grid()[0]), dtype=torch.float32)

    def cost(images: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        c = image_costs_torch(images, states, view)
        prox = c["proximity"]
        if proximity == "front-rear":
            masked = masks_torch(states, view)["proximity"] * images[:, 1]
            ahead = fwd.to(images) >= 0
            prox = (masked * ahead).flatten(1).amax(1) + (masked * ~ahead).flatten(1).amax(1)
        return prox + weight_lane * c["lane"] + c["offroad"]

    return cost


def local_uncertainty(mc, model, view: View) -> torch.Tensor:
    """U ``[B, T]`` from MC-dropout statistics: the state variance (delta-std units) plus
    the cars channel's pixel variance averaged under the proximity mask of the predicted
    state. Why local: averaged over the whole 72 m x 15 m view, U is lowest where the
    view holds the fewest cars, and a policy trained against it learned to steer and
    speed so as to pull empty road in at the image borders."""

    b, t = mc.mean.shape[:2]
    mask = masks_torch(mc.mean.flatten(0, 1).detach(), view)["proximity"].view(
        b, t, view.height, view.width)
    var = mc.image_var[:, :, 1]
    pixels = (mask * var).flatten(2).sum(-1) / mask.flatten(2).sum(-1).clamp_min(1.0)
    return (mc.var / model.delta_std**2).sum(-1) + pixels


def _uncertainty_fn(model, n: int, view: View):

    base = model.model if isinstance(model, LastContext) else model

    def u(context: torch.Tensor, frames: torch.Tensor, actions: torch.Tensor,
          z: torch.Tensor | None) -> torch.Tensor:
        # one sampled network per MC sample for the whole rollout: several times cheaper
        # on a CPU than fresh masks per step, and still a variance over dropout networks
        k = base.ncond
        mc = mc_uncertainty(base, context[:, -k:], actions, n=n, z=z, images=frames[:, -k:],
                            masks="trajectory")
        return local_uncertainty(mc, base, view)

    return u


def _latent_fn(model):
    def latent(batch: int, steps: int) -> torch.Tensor | None:
        return model.sample_prior(batch, steps) if model.z_dim else None

    return latent


def _posterior_fn(model):
    """z ``[B, T, Z]`` (posterior means) inferred from the recorded future, teacher-forced
    along the recorded context (the model's public ``posterior``)."""

    def posterior(ctx: torch.Tensor, cframes: torch.Tensor, tstates: torch.Tensor,
                  tframes: torch.Tensor) -> torch.Tensor:
        ms, zs = model.reset(ctx, cframes), []
        for t in range(tstates.shape[1]):
            nxt = model.reset(torch.cat([ms.context[:, 1:], tstates[:, t:t + 1]], 1),
                              torch.cat([ms.frames[:, 1:], to_unit(tframes[:, t:t + 1])], 1))
            zs.append(model.posterior(ms, nxt.state, nxt.image))
            ms = nxt
        return torch.stack(zs, 1)

    return posterior


class LastContext:
    """A world model fed only the last ``model.ncond`` entries of a longer policy context
    (``step`` and ``_features`` slice; everything else passes through)."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def step(self, context, action, z=None, image=None):
        k = self.model.ncond
        return self.model.step(context[:, -k:], action, z=z,
                               image=None if image is None else image[:, -k:])

    def _features(self, context, frames):
        k = self.model.ncond
        return self.model._features(context[:, -k:], frames[:, -k:])


def _oracle_fn(view: View, dt: float):
    """``batch -> ReplayOracle`` of the batch's recorded future (envs/highway/oracle.py)."""

    def make(batch: dict[str, torch.Tensor]) -> ReplayOracle:
        return ReplayOracle(batch["target_images"], batch["targets"], view.res, dt)

    return make


def _sampler(windows, device: torch.device):
    def sample(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, len(windows), size=n)
        return {k: v.to(device) for k, v in windows.get_batch(idx).items()}

    return sample


def _new_policy(config: HighwayConfig, ds, ncond: int):

    st = ds.stats
    p = config.policy
    motion = None
    if p.relative_motion:
        view = View(**ds.manifest["generator"]["config"]["view"])
        motion = {"channel": 1, "res": view.res, "dt": ds.dt, "min_speed": 0.2,
                  "max_speed": 20.0}
    return ContextPolicy(ds.state_dim, ds.action_dim, tuple(ds.image_shape), ncond,
                         st.state_mean, st.state_std, st.action_mean, st.action_std,
                         hidden=p.hidden, channels=tuple(p.channels), motion=motion,
                         history_channels=tuple(p.history_channels) or None)


def _policy_path(run: Run, method: str, seed: int) -> Path:
    return run.checkpoints / f"policy-{method}-seed{seed}.pt"


def _policy_meta(config: HighwayConfig, method: str, seed: int) -> dict:
    """What a policy checkpoint keeps beside its network's config, and what loading it
    checks: the learner, the seed, and the world-model mode it learned through (a policy
    trained through the ego-motion model has not seen the plain model's predictions)."""
    meta = {"method": method, "seed": seed, "world_model": METHOD_MODEL[method]}
    if METHOD_MODEL[method] is not None:
        meta["ego_motion"] = config.model.ego_motion
    return meta


def _policy_from(cfg: dict) -> ContextPolicy:
    """The network a checkpoint's config describes (its normalisation statistics are
    buffers, restored with the weights)."""
    s, a = cfg["state_dim"], cfg["action_dim"]
    return ContextPolicy(s, a, tuple(cfg["image_shape"]), cfg["ncond"], np.zeros(s), np.ones(s),
                         np.zeros(a), np.ones(a), hidden=cfg["hidden"],
                         channels=tuple(cfg["channels"]), bound=cfg["bound"],
                         motion=cfg.get("motion"), history_channels=cfg.get("history_channels"))


def _check_policy_file(config: HighwayConfig, run: Run, method: str, seed: int, ds,
                       ncond: int) -> Path:
    """The checkpoint of ``method``/``seed``, refused with one line when it is missing, of
    the older format, or of another configuration than ``config`` (context length,
    channels, ego-motion mode, ...)."""
    path = _policy_path(run, method, seed)
    if not path.is_file():
        raise CheckpointError(f"policy {method!r} (seed {seed}) not found: {path} "
                              "(run `worldplan highway train-policy` first)")
    payload = read_policy(path, DATASET_TASK)
    check_policy(payload, path, _new_policy(config, ds, ncond).config(),
                 _policy_meta(config, method, seed))
    return path


def _load_policy(config: HighwayConfig, run: Run, method: str, seed: int, ds,
                 device: torch.device, ncond: int) -> ContextPolicy:
    path = _check_policy_file(config, run, method, seed, ds, ncond)
    policy, _meta = load_policy(path, DATASET_TASK, lambda cfg, meta: _policy_from(cfg))
    return policy.to(device).eval()


def _policy_ncond(config: HighwayConfig) -> int:
    """The policy's context length: ``policy.ncond``, or the world model's when 0."""
    return config.policy.ncond or config.model.ncond


# ----------------------------------------------------------------------------- train-model
def train_model_stage(config: HighwayConfig, run: Run) -> None:
    """Deterministic ImageModel, then a stochastic one warm-started from it."""
    _set_threads(config)

    m = config.model
    if m.z_dim < 1:
        raise ValueError(f"model.z_dim must be >= 1 for the stochastic model, got {m.z_dim}")
    ds = _open_dataset(run)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    common: dict = dict(ncond=m.ncond, hidden=m.hidden, channels=tuple(m.channels),
                        dropout=m.dropout)
    model_cls = ImageModel
    if m.ego_motion:
        view = View(**ds.manifest["generator"]["config"]["view"])
        model_cls = EgoMotionImageModel
        # the flow prior starts at the mean forward speed of the training data
        common.update(res=view.res, dt=ds.dt, flow_speed=float(ds.stats.state_mean[2]),
                      flow_prior=m.flow_prior)
    det = model_cls(ds.state_dim, ds.action_dim, tuple(ds.image_shape), z_dim=0, **common)
    results = {}
    for which, model, steps in (("deterministic", det, m.det_steps),):
        tc = TrainConfig(steps=steps, batch_size=m.batch_size, lr=m.lr, npred=m.npred,
                         seed=config.seed, device=str(device), val_windows=256)
        results[which] = train_model(model, ds, tc, run.checkpoints / MODEL_DIRS[which],
                                     run.writer(), run.resume, tag=f"model-{which}")
    sto = model_cls(ds.state_dim, ds.action_dim, tuple(ds.image_shape), z_dim=m.z_dim,
                    beta=m.beta, p_z=m.p_z, z_dropout=m.z_dropout, **common)
    missing, _ = sto.load_state_dict(det.state_dict(), strict=False)
    log.info("stochastic model warm-started; new parameters: %d tensors", len(missing))
    tc = TrainConfig(steps=m.sto_steps, batch_size=m.batch_size, lr=m.lr, npred=m.npred,
                     seed=config.seed + 1, device=str(device), val_windows=256)
    results["stochastic"] = train_model(sto, ds, tc, run.checkpoints / MODEL_DIRS["stochastic"],
                                        run.writer(), run.resume, tag="model-stochastic")
    metrics = {}
    for which in ("deterministic", "stochastic"):
        h = results[which]
        model = _load_world_model(run, which, ds, device)
        err_list: list[float] = []
        if m.horizon_error:
            err = evaluate_horizon_error(model, ds, "test", horizon=min(10, m.npred * 3))
            err_list = [float(e) for e in np.asarray(err).reshape(-1)]
        metrics[which] = {"best_val": float(h.get("best_val", float("nan"))),
                          "steps": int(h.get("steps", 0)), "seconds": float(h.get("seconds", 0)),
                          "test_state_rmse_by_horizon": err_list}
    run.update_metrics("train-model", metrics)
    log.info("train-model: %s", metrics)


# ----------------------------------------------------------------------------- train-policy
def _check_start_policies(config: HighwayConfig, run: Run, ds, ncond: int) -> None:
    """The policies the model-based learners start from that this stage reads but does
    not train (``policy.init_from``, or an earlier imitation policy): checked before any
    training, so a missing one or one of another configuration fails first."""
    p = config.policy
    start = p.init_from or "imitation"
    if start in p.methods or not set(p.methods) - {"imitation"}:
        return
    for seed in p.seeds:
        if start != "imitation" and not _policy_path(run, start, seed).is_file():
            raise ValueError(f"policy.init_from {start!r}: no such policy of seed {seed} "
                             f"in {run.checkpoints}")
        if _policy_path(run, start, seed).is_file():
            _check_policy_file(config, run, start, seed, ds, ncond)


def train_policy_stage(config: HighwayConfig, run: Run) -> None:
    """Train every method in ``policy.methods`` and save ``checkpoints/policy-<m>.pt``."""
    _set_threads(config)

    p = config.policy
    _check_methods(tuple(p.methods), POLICY_METHODS, "policy.methods")
    ds = _open_dataset(run)
    device = resolve_device(config.device)
    needs = {METHOD_MODEL[m] for m in p.methods} - {None}
    if p.world == "plan-head" and {"vg", "svg", "mpur"} & set(p.methods):
        needs.add("stochastic")  # the trunk whose scene the head corrects
    models = {w: _load_world_model(run, w, ds, device) for w in sorted(needs)}  # fail early
    model_ncond = next(iter(models.values())).ncond if models else config.model.ncond
    ncond = p.ncond or model_ncond
    if ncond < model_ncond:
        raise ValueError(f"policy.ncond {ncond} is shorter than the world model's context "
                         f"{model_ncond}")
    _check_start_policies(config, run, ds, ncond)
    view = View(**ds.manifest["generator"]["config"]["view"])
    cost = _cost_fn(view, p.lane_weight, p.proximity)
    rng = seed_everything(config.seed)
    # policies learn from the recorded drivers' contexts (the drives only teach the model)
    windows = ds.windows("train", ncond, max(p.horizon, 1),
                         episodes=_recorded_ids(ds, "train"))
    sample = _sampler(windows, device)
    oracle_sample = None
    if "oracle" in p.methods:
        oracle_sample = _sampler(ds.windows("train", ncond, p.oracle_horizon + p.oracle_burn_in,
                                            episodes=_recorded_ids(ds, "train")), device)
    summary: dict[str, dict] = {}
    u_stats = None
    plan = None
    plan_sample = sample
    if p.world == "plan-head" and {"vg", "svg", "mpur"} & set(p.methods):
        # the scene covers the burn-in and the gradient steps, and the hinge is fitted
        # per step of it
        if p.burn_in:
            plan_sample = _sampler(ds.windows("train", ncond, max(p.horizon, 1) + p.burn_in,
                                              episodes=_recorded_ids(ds, "train")), device)
        plan = _plan_head(config, run, ds, models["stochastic"], view, plan_sample, rng, ncond)
        summary["plan_head"] = plan["metrics"]
        u_stats = plan["hinge"]
    elif "mpur" in p.methods:
        sto = models["stochastic"]
        u_stats = expert_uncertainty_stats(_uncertainty_fn(sto, p.mc_samples, view), sample,
                                           _latent_fn(sto), rng, batches=4,
                                           batch_size=p.batch_size)
        summary["expert_uncertainty"] = u_stats.to_dict()
    if not p.seeds or len(set(p.seeds)) != len(p.seeds):
        raise ValueError(f"policy.seeds must be distinct and non-empty, got {p.seeds}")
    # imitation first: the model-based learners start from it
    ordered = sorted(p.methods, key=lambda m: m != "imitation")
    for seed, method in [(s, m) for s in p.seeds for m in ordered]:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        policy = _new_policy(config, ds, ncond).to(device)
        t0 = time.perf_counter()
        if method == "imitation":
            hist = {"loss": train_imitation(policy, sample, ImCfg(steps=p.imitation_steps,
                                                                  batch_size=4 * p.batch_size,
                                                                  lr=1e-3), rng, run.writer())}
        else:
            start = p.init_from or "imitation"
            if _policy_path(run, start, seed).is_file():
                # start every model-based learner from the imitation policy of its seed
                # (as PPUU's MPER/MPUR runs start from a sensible driver), or from the
                # policy named by policy.init_from (to continue a learner's training)
                policy.load_state_dict(
                    _load_policy(config, run, start, seed, ds, device, ncond).state_dict())
            model = models.get(METHOD_MODEL[method])
            if model is not None and model.ncond < ncond:
                model = LastContext(model)
            if method == "oracle":
                hist = train_mpur(policy, None, oracle_sample, cost,
                                  MPURConfig(steps=p.oracle_steps, batch_size=p.oracle_batch_size,
                                             horizon=p.oracle_horizon, lr=p.oracle_lr, lam=0.0,
                                             detach_frames=p.detach_frames,
                                             burn_in=p.oracle_burn_in),
                                  rng, lambda b, t: None, writer=run.writer(), tag=method,
                                  model_fn=_oracle_fn(view, ds.dt))
            elif method == "mper":
                hist = {"loss": train_mper(policy, model, sample, _posterior_fn(model),
                                           model.delta_std,
                                           MPERConfig(steps=p.bptt_steps, batch_size=p.batch_size,
                                                      horizon=p.horizon, lr=p.lr),
                                           rng, run.writer())}
            elif plan is not None:

                lam = p.lam if method == "mpur" else 0.0
                latent = "zero" if method == "vg" else "prior"
                model_fn, u_fn = plan_world_fn(plan["trunk"], plan["head"], view, latent)
                pool = scene_pool(plan["trunk"], plan_sample, rng, p.scene_windows, latent)
                hist = train_mpur(policy, None, pool, cost,
                                  MPURConfig(steps=p.bptt_steps, batch_size=p.batch_size,
                                             horizon=p.horizon, lr=p.lr, lam=lam,
                                             detach_frames=p.detach_frames,
                                             burn_in=p.burn_in),
                                  rng, lambda b, t: None, u_fn if lam > 0 else None,
                                  LastSteps(u_stats, p.horizon) if lam > 0 else None,
                                  run.writer(), tag=method, model_fn=model_fn)
            else:
                lam = p.lam if method == "mpur" else 0.0
                hist = train_mpur(policy, model, sample, cost,
                                  MPURConfig(steps=p.bptt_steps, batch_size=p.batch_size,
                                             horizon=p.horizon, lr=p.lr, lam=lam,
                                             detach_frames=p.detach_frames,
                                             burn_in=p.burn_in),
                                  rng, _latent_fn(model),
                                  _uncertainty_fn(model, p.mc_samples, view) if lam > 0 else None,
                                  u_stats if lam > 0 else None, run.writer(), tag=method)
        save_policy(_policy_path(run, method, seed), policy, DATASET_TASK,
                    _policy_meta(config, method, seed))
        key = f"{method}/seed{seed}"
        summary[key] = {"seconds": time.perf_counter() - t0,
                        "final_loss": float(np.mean(hist["loss"][-10:])) if hist["loss"]
                        else float("nan")}
        if plan is not None and method != "oracle":
            # the plan-aware U of this policy on its own imagined rollouts (val windows)
            summary[key]["plan_u"] = _policy_plan_u(policy, plan, view, p, ds, ncond, device)
        log.info("policy %s: %s", key, summary[key])
    run.update_metrics("train-policy", summary)


def _plan_head(config: HighwayConfig, run: Run, ds, trunk, view: View, sample,
               rng: np.random.Generator, ncond: int) -> dict:
    """The residual head ensemble on the stochastic trunk (trained once per run and
    cached in ``checkpoints/plan-head.pt``), PPUU's hinge fitted on expert windows, and
    the AUROC of U between recorded and unusual actions on validation windows."""

    p = config.policy
    path = run.checkpoints / "plan-head.pt"
    spec = {"members": p.head_members, "width": p.head_width, "steps": p.head_steps,
            "windows": p.head_windows, "horizon": p.head_horizon,
            "trunk_mtime": _model_path(run, "stochastic").stat().st_mtime}
    torch.manual_seed(config.seed)
    hrng = np.random.default_rng(config.seed + 7)
    metrics: dict = {}
    if path.is_file() and (payload := load_checkpoint(path, required=("state_dict", "spec",
                                                                     "config"),
                                                      kind="highway-plan-head"))["spec"] == spec:
        head = PlanHeadEnsemble(**payload["config"])
        head.load_state_dict(payload["state_dict"])
        metrics = payload.get("metrics", {})
    else:
        t0 = time.perf_counter()
        pairs = head_pairs(ds, trunk, ds.episode_ids("train"), p.head_horizon, p.head_windows,
                           hrng)
        scale = pairs["offset"].std(0).clamp_min(1e-3).tolist()
        head = PlanHeadEnsemble(1, OFFSET_DIM, scale, k=p.head_members, width=p.head_width)
        t1 = time.perf_counter()
        losses = train_plan_head(head, pair_sampler(pairs), p.head_steps, 32, hrng)
        metrics = {"pairs": len(pairs["frame"]), "offset_std": scale,
                   "final_loss": float(np.mean(losses[-50:])),
                   "copy_trunk_loss": float(((pairs["frame"].float() - pairs["target"].float())
                                             ** 2).mean()),
                   "seconds_data": t1 - t0, "seconds_train": time.perf_counter() - t1}
        save_checkpoint(path, {"kind": "highway-plan-head", "state_dict": head.state_dict(),
                               "config": head.config(), "spec": spec, "metrics": metrics})
    head.eval()
    for q in head.parameters():
        q.requires_grad_(False)
    hinge = fit_hinge(trunk, head, view, sample, hrng)
    # AUROC of U (the hinge summed over the rollout) between the recorded actions and
    # unusual ones, on validation windows
    val = _sampler(ds.windows("val", ncond, max(p.horizon, 1),
                              episodes=_recorded_ids(ds, "val")), torch.device("cpu"))
    u_in, u_out = [], []
    for _ in range(4):
        b = val(hrng, 32)
        u_in.append(hinge.hinge(variances_under(trunk, head, view, b, b["actions"])).sum(1))
        odd = unusual_actions(b["actions"], hrng)
        u_out.append(hinge.hinge(variances_under(trunk, head, view, b, odd)).sum(1))
    ui, uo = torch.cat(u_in), torch.cat(u_out)
    metrics = {**metrics, "auroc_unusual_vs_recorded": auroc(ui, uo),
               "u_recorded": float(ui.mean()), "u_unusual": float(uo.mean())}
    log.info("plan head: %s", metrics)
    return {"trunk": trunk, "head": head, "hinge": hinge, "metrics": metrics}


@torch.no_grad()
def _policy_plan_u(policy, plan: dict, view: View, p: PolicyConfig, ds, ncond: int,
                   device) -> float:
    """Mean plan-aware U (hinge, summed over the steps) of ``policy`` on its own
    imagined rollouts from 64 validation windows."""

    val = _sampler(ds.windows("val", ncond, max(p.horizon, 1),
                              episodes=_recorded_ids(ds, "val")), device)
    rng = np.random.default_rng(123)
    us = []
    for _ in range(4):
        b = val(rng, 16)
        model_fn, u_fn = plan_world_fn(plan["trunk"], plan["head"], view)
        world = model_fn(b)
        policy_rollout(policy, world, b["context"], b["context_images"], p.horizon)
        us.append(plan["hinge"].hinge(world.variances()).sum(1))
    return float(torch.cat(us).mean())


# ----------------------------------------------------------------------------- evaluate
def _held_out_sets(config: HighwayConfig, run: Run, ds, rec: Recording):
    """The test split of the training recording (``evaluate.test_split``) and one set per
    ``evaluate.eval_seeds`` recording (cached in the run's data folder); at most
    ``config.episodes`` cars per set when it is > 0."""

    ev = config.evaluate
    used = {config.seed}
    bad = [s for s in ev.eval_seeds if s in used]
    if bad or len(set(ev.eval_seeds)) != len(ev.eval_seeds):
        raise ValueError(f"evaluate.eval_seeds must be distinct and differ from the training "
                         f"seed {config.seed}, got {list(ev.eval_seeds)}")
    sets = []
    if ev.test_split:
        meta = ds.manifest["generator"]["config"]
        ids = _recorded_ids(ds, "test")
        if not ids:
            raise ValueError(f"data set {ds.path} has no test episodes")
        sets.append(HeldOut("test", rec, np.array([meta["car_ids"][i] for i in ids]),
                            np.array([meta["start_steps"][i] for i in ids])))
    for seed in ev.eval_seeds:
        sets.append(eval_recording(seed, ev.eval_record_seconds, ev.eval_warmup_seconds,
                                   ev.eval_cars, run.data))
    if not sets:
        raise ValueError("no held-out cars: set evaluate.test_split or evaluate.eval_seeds")
    if config.episodes > 0:
        sets = [HeldOut(h.name, h.rec, h.cars[:config.episodes], h.starts[:config.episodes])
                for h in sets]
    return sets


def evaluate_stage(config: HighwayConfig, run: Run) -> None:
    """Every method of ``evaluate.methods`` on the held-out cars of every held-out set
    (experiments/highway_eval.py); metrics.json, a markdown table, a video."""

    _set_threads(config)
    ev = config.evaluate
    _check_methods(tuple(ev.methods), METHODS, "evaluate.methods")
    if ev.ncond < 1 or ev.max_steps < 1:
        raise ValueError(f"evaluate.ncond and evaluate.max_steps must be >= 1, got "
                         f"{ev.ncond}, {ev.max_steps}")
    ds = _open_dataset(run)
    device = resolve_device(config.device)
    # load everything first so that a missing checkpoint fails before any episode runs
    seeds = tuple(config.policy.seeds)
    policies = {(m, s): _load_policy(config, run, m, s, ds, device, _policy_ncond(config))
                for m in ev.methods if m in POLICY_METHODS for s in seeds}
    need_model = "mpc" in ev.methods or (ev.uncertainty and _model_path(
        run, "stochastic").is_file())
    sto = _load_world_model(run, "stochastic", ds, device) if need_model else None
    rec = Recording.load(run.data / ds.manifest["generator"]["config"]["recording"])
    view = View(**ds.manifest["generator"]["config"]["view"])
    sets = _held_out_sets(config, run, ds, rec)
    seed_everything(config.seed)

    u_fn = predict = None
    if sto is not None and ev.uncertainty:

        k = sto.ncond

        def u_fn(states, frames, actions):
            z = torch.zeros(len(states), 1, sto.z_dim)
            mc = mc_uncertainty(sto, states[:, -k:].to(device), actions[:, None].to(device),
                                n=max(ev.mc_samples, 2), z=z.to(device),
                                images=frames[:, -k:].to(device))
            return local_uncertainty(mc, sto, view)[:, 0]

        def predict(states, frames, actions):
            return sto.step(states[:, -k:].to(device), actions.to(device),
                            z=torch.zeros(len(states), sto.z_dim, device=device),
                            image=frames[:, -k:].to(device))[1]

    common = {"sets": [(h.name, len(h.cars)) for h in sets], "ncond": ev.ncond,
              "max_steps": ev.max_steps, "u": bool(u_fn), "mc": ev.mc_samples,
              "u_every": ev.uncertainty_every,
              "model": he.file_stamp(_model_path(run, "stochastic")) if sto else None}
    results: dict[str, dict] = {}
    for method in ev.methods:
        per_seed, per_seed_eps = {}, {}
        for seed in (seeds if method in POLICY_METHODS else (None,)):
            t0 = time.process_time()
            context = sto.ncond if sto is not None else 1
            if method == "no-action":
                act = he.no_action
            elif method == "expert-replay":
                act = he.expert_act
            elif method in PRIVILEGED:
                act = he.privileged_act(PRIVILEGED[method])
            elif method == "mpc":
                act = _mpc_act(sto, ds, view, ev, config.policy.lane_weight, config.seed, device)
            else:
                pol = policies[(method, seed)]
                act = he.policy_act(pol, device)
                context = max(context, pol.cfg["ncond"])
            record = 0 if (ev.video and method == "mpur" and seed == seeds[0]) else -1
            stamp = (he.file_stamp(_policy_path(run, method, seed)) if seed is not None
                     else None)
            key = he.cache_key(method=method, seed=seed, policy=stamp, context=context,
                               mpc=dataclasses.asdict(ev) if method == "mpc" else None,
                               **common)
            video: list = []

            m_sets = sets
            if method == "mpc":
                m_sets = [he.HeldOut(h.name, h.rec, h.cars[:ev.mpc_cars], h.starts[:ev.mpc_cars])
                          for h in sets]

            def compute(act=act, context=context, record=record, video=video, m_sets=m_sets):
                outs = []
                for i, h in enumerate(m_sets):
                    out = he.drive(h, act, ev.ncond, context, view, ev.max_steps, u_fn,
                                   ev.uncertainty_every, record if i == 0 else -1,
                                   predict if record >= 0 and i == 0 else None)
                    video.extend(out.pop("video"))
                    outs.append(out)
                return he.concat(outs)

            name = method if seed is None else f"{method}-seed{seed}"
            eps = he.cached(run.path / "eval-cache", name, key, compute)
            if video:
                with run.optional_artefact("the evaluation video"):
                    he.write_video([he.video_frame(o, p) for o, p in video],
                                   run.videos / "mpur_episode.mp4")
            row = he.summarise(eps)
            row["cpu_seconds"] = time.process_time() - t0
            log.info("%-16s success %.3f (%.3f-%.3f) no-rear %.3f, cpu %.0f s", name,
                     row["success_rate"], *row["success_ci95"], row["success_no_rear"],
                     row["cpu_seconds"])
            if seed is None:
                results[method] = row
            else:
                per_seed[str(seed)], per_seed_eps[str(seed)] = row, eps
        if per_seed:
            results[method] = he.over_seeds(per_seed, per_seed_eps)
        run.update_metrics("evaluate", {method: results[method]})
    table = he.format_table(results)
    (run.path / "evaluation.md").write_text(table + "\n")
    log.info("evaluation (%d held-out cars: %s):\n%s", sum(len(h.cars) for h in sets),
             ", ".join(f"{h.name} {len(h.cars)}" for h in sets), table)


def _mpc_act(model, ds, view: View, ev: EvalConfig, lane_weight: float, seed: int,
             device: torch.device):
    """Gradient MPC (experiments/highway_mpc.py) as an evaluation ``Act``; a fresh planner
    (no warm start) per batch of episodes."""
    held: dict[str, object] = {}  # the batch (kept alive, so ``is`` is reliable), planner

    def act(batch, st, fr):
        if held.get("batch") is not batch:
            held.update(batch=batch,
                        planner=_gradient_mpc(model, ds, view, ev, lane_weight, seed))
        out = held["planner"].act(st.to(device), fr.to(device).float() / 255.0)
        return out.detach().cpu().numpy()

    return act


def _u_map(view: View):
    """U per step ``[B, T]`` from MC-dropout frame variances ``[B, T, C, H, W]`` and states
    ``[B, T, 4]``: the cars channel's variance averaged under the proximity mask (the
    ego-motion model's state is kinematic, so it has no variance; see
    :func:`local_uncertainty`)."""

    def u(var: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        b, t = states.shape[:2]
        mask = masks_torch(states.flatten(0, 1).detach(), view)["proximity"].view(
            b, t, view.height, view.width)
        return (mask * var[:, :, 1]).flatten(2).sum(-1) / mask.flatten(2).sum(-1).clamp_min(1.0)

    return u


def _gradient_mpc(model, ds, view: View, ev: EvalConfig, lane_weight: float, seed: int):
    """Gradient MPC through the stochastic image model (z = 0, its mean prediction): the
    image cost of each predicted frame plus ``mpc_u_weight`` x MC-dropout U; with
    ``mpc_cache`` the other cars' predicted motion is computed once per plan
    (experiments/highway_mpc.py)."""

    torch.manual_seed(seed)
    st = ds.stats
    low = torch.as_tensor(st.action_mean - 3 * st.action_std, dtype=torch.float32)
    high = torch.as_tensor(st.action_mean + 3 * st.action_std, dtype=torch.float32)
    return SceneCacheMPC(model, _cost_fn(view, lane_weight), _u_map(view), low, high,
                         ev.mpc_horizon, ev.mpc_iterations, ev.mpc_lr, ev.mpc_u_weight,
                         max(ev.mc_samples, 2), cache=ev.mpc_cache)


def validate_config(config: HighwayConfig) -> None:
    """Checks of the whole config that the stages would otherwise make only when they
    reach them (the CLI runs these before any stage works)."""
    _check_methods(tuple(config.policy.methods), POLICY_METHODS, "policy.methods")
    _check_methods(tuple(config.evaluate.methods), METHODS, "evaluate.methods")
    if config.model.z_dim < 1:
        raise ValueError(f"model.z_dim must be >= 1, got {config.model.z_dim}")
    if config.evaluate.ncond < 1 or config.evaluate.max_steps < 1:
        raise ValueError("evaluate.ncond and evaluate.max_steps must be >= 1")
    if not config.policy.seeds or len(set(config.policy.seeds)) != len(config.policy.seeds):
        raise ValueError(f"policy.seeds must be distinct and non-empty, got "
                         f"{config.policy.seeds}")
    if config.policy.init_from and config.policy.init_from not in POLICY_METHODS:
        raise ValueError(f"policy.init_from must be a policy method, got "
                         f"{config.policy.init_from!r}")
    if config.policy.world not in WORLDS:
        raise ValueError(f"policy.world must be one of {WORLDS}, got {config.policy.world!r}")
    if config.policy.burn_in < 0 or config.policy.oracle_burn_in < 0:
        raise ValueError(f"policy.burn_in and policy.oracle_burn_in must be >= 0, got "
                         f"{config.policy.burn_in}, {config.policy.oracle_burn_in}")


def shown_defaults(config: HighwayConfig) -> HighwayConfig:
    """``config`` with ``policy.ncond = 0`` ("the world model's context") replaced by the
    context the stages will use, for ``--help``."""
    return dataclasses.replace(config, policy=dataclasses.replace(
        config.policy, ncond=_policy_ncond(config)))


TASK = Task(
    name="highway",
    config_cls=HighwayConfig,
    presets={"default": default_config, "quick": quick_config},
    stages={"collect": collect, "train-model": train_model_stage,
            "train-policy": train_policy_stage, "evaluate": evaluate_stage},
    description="PPUU dense-traffic driving: simulator, tracked data set, policies",
    validate=validate_config,
    resumable=("train-model",),
    shown_defaults=shown_defaults,
    # evaluate reads policy.seeds (which policies) and lane_weight (gradient MPC's cost)
    sections={"collect": ("collect",), "train-model": ("model",),
              "train-policy": ("policy",),
              "evaluate": ("evaluate", "episodes", "policy.seeds", "policy.lane_weight")},
    help_note="--policy.ncond is shown as the context it takes: 0 (the preset's value) "
              "means the world model's,\n--model.ncond {config.model.ncond}.",
)

__all__ = ["METHODS", "TASK", "HighwayConfig", "collect", "evaluate_stage",
           "extraction_errors", "smooth_tracks", "tracker_noise", "traffic_statistics",
           "train_model_stage", "train_policy_stage"]
