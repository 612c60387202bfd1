"""The highway's data and world models: the ``collect`` stage (traffic recorded, tracked
with camera-tracker noise, RTS-smoothed, actions extracted, one episode per car plus
counterfactual drives) and the ``train-model`` stage (a deterministic ImageModel, then
a stochastic one warm-started from it).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from worldplan.envs.highway import Recording, record_traffic
from worldplan.envs.highway.costs import CostConfig
from worldplan.envs.highway.counterfactual import DriveNoise, counterfactual_drives
from worldplan.envs.highway.episodes import build_episodes, headings_from_velocity
from worldplan.envs.highway.kinematics import actions_from_states, states_from_tracks
from worldplan.envs.highway.render import View
from worldplan.envs.highway.traffic import TrafficConfig
from worldplan.errors import UserError
from worldplan.experiments.common import resolve_device, save_figure, seed_everything
from worldplan.experiments.highway_config import (
    DATASET_TASK,
    MODEL_DIRS,
    RECORDING_FILE,
    SHORT_STOCHASTIC_DIR,
    HighwayConfig,
)
from worldplan.experiments.highway_shared import load_world_model, open_dataset, set_threads
from worldplan.experiments.runs import Run
from worldplan.filters import KalmanFilter
from worldplan.worldmodels.base import load_model
from worldplan.worldmodels.dataset import split_episode_ids, write_dataset
from worldplan.worldmodels.ego_motion import EgoMotionImageModel
from worldplan.worldmodels.images import ImageModel
from worldplan.worldmodels.training import TrainConfig, evaluate_horizon_error, train_model

log = logging.getLogger(__name__)


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
    set_threads(config)

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
        raise UserError(f"only {len(cars)} cars crossed the whole road; record longer "
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


# ----------------------------------------------------------------------------- train-model
def train_model_stage(config: HighwayConfig, run: Run) -> None:
    """Deterministic ImageModel, then a stochastic one warm-started from it."""
    set_threads(config)

    m = config.model
    if m.z_dim < 1:
        raise UserError(f"model.z_dim must be >= 1 for the stochastic model, got {m.z_dim}")
    ds = open_dataset(run)
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
    # with a long-unroll phase, the short phase keeps its own folder and the long one
    # writes the model every later stage loads
    short_dir = run.checkpoints / (SHORT_STOCHASTIC_DIR if m.long_npred
                                   else MODEL_DIRS["stochastic"])
    results["stochastic"] = train_model(sto, ds, tc, short_dir, run.writer(), run.resume,
                                        tag="model-stochastic")
    if m.long_npred:
        sto = load_model(short_dir / "best.pt", device)
        tc = TrainConfig(steps=m.long_steps, batch_size=m.batch_size, lr=m.long_lr,
                         npred=m.long_npred, seed=config.seed + 2, device=str(device),
                         val_windows=256, checkpoint_every=100)
        short = results["stochastic"]
        results["stochastic"] = train_model(sto, ds, tc,
                                            run.checkpoints / MODEL_DIRS["stochastic"],
                                            run.writer(), run.resume,
                                            tag="model-stochastic-long")
        results["stochastic"]["seconds"] = (results["stochastic"].get("seconds", 0.0)
                                            + short.get("seconds", 0.0))
    metrics = {}
    for which in ("deterministic", "stochastic"):
        h = results[which]
        model = load_world_model(run, which, ds, device)
        err_list: list[float] = []
        if m.horizon_error:
            err = evaluate_horizon_error(model, ds, "test", horizon=min(10, m.npred * 3))
            err_list = [float(e) for e in np.asarray(err).reshape(-1)]
        metrics[which] = {"best_val": float(h.get("best_val", float("nan"))),
                          "steps": int(h.get("steps", 0)), "seconds": float(h.get("seconds", 0)),
                          "test_state_rmse_by_horizon": err_list}
    if m.long_npred:
        metrics["stochastic"]["long_npred"] = m.long_npred
    run.update_metrics("train-model", metrics)
    log.info("train-model: %s", metrics)
