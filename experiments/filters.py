"""``worldplan filters evaluate``: state estimation demonstrations, self-contained.

evaluate  (a) large-angle pendulum measured through ``sin(angle)``: a Kalman filter on the
          model linearised about the bottom, the EKF, the UKF and the particle filter on
          the same batch of tracks; RMSE table in metrics.json, figure of the four
          estimates against the truth. (b) robot localisation: a particle filter from a
          uniform prior over a known landmark map, range measurements, converging to the
          true pose; figure of the particle cloud over time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldplan.experiments.common import resolve_device, save_figure, seed_everything
from worldplan.experiments.runs import Run
from worldplan.experiments.tasks import Task, register_task
from worldplan.filters import (
    ExtendedKalmanFilter,
    KalmanFilter,
    ParticleFilter,
    UnscentedKalmanFilter,
)

log = logging.getLogger(__name__)

GRAVITY = 9.81  # m/s^2 (pendulum length 1 m)
# the known map: landmark positions (m) in a 20 m x 20 m room, deliberately asymmetric
LANDMARKS = np.array([[2.0, 3.0], [17.0, 4.5], [9.0, 17.5], [15.5, 14.0], [4.0, 12.0]])
ROOM = 20.0  # m


@dataclass
class FiltersConfig:
    """Pendulum: state ``[angle (rad), angular rate (rad/s)]``, Euler step ``dt`` (s),
    white-noise process with spectral density ``process_noise`` (rad^2/s^3), measurement
    ``sin(angle) + N(0, measurement_noise)`` (variance); ``episodes`` tracks start at
    ``N([initial_angle, 0], initial_std^2 I)``. Localisation: ``loc_particles`` particles,
    ``loc_steps`` steps of ``loc_dt`` s, range noise ``range_std`` (m), landmarks seen only
    within ``sensor_range`` (m)."""

    seed: int = 0
    device: str = "cpu"
    episodes: int = 200
    pendulum_steps: int = 100
    dt: float = 0.05
    process_noise: float = 0.1
    measurement_noise: float = 0.3
    initial_angle: float = 2.0
    initial_std: float = 1.0
    pf_particles: int = 1000
    loc_particles: int = 5000
    loc_steps: int = 60
    loc_dt: float = 0.5
    range_std: float = 0.5
    sensor_range: float = 9.0
    roughening: float = 0.1


def quick_config() -> FiltersConfig:
    """Smoke size: same pendulum batch (the comparison needs the tracks), fewer particles."""
    return FiltersConfig(pf_particles=400, loc_particles=5000, loc_steps=40)


# -- (a) pendulum ------------------------------------------------------------------------
def pendulum_step(x: torch.Tensor, dt: float) -> torch.Tensor:
    """Euler step of a 1 m pendulum: ``[B, 2] -> [B, 2]`` (angle from the bottom, rad)."""
    return torch.stack(
        [x[..., 0] + x[..., 1] * dt, x[..., 1] - GRAVITY * torch.sin(x[..., 0]) * dt], -1
    )


def pendulum_measure(x: torch.Tensor) -> torch.Tensor:
    """Horizontal position of the bob: ``[B, 2] -> [B, 1]``."""
    return torch.sin(x[..., :1])


def pendulum_noise(config: FiltersConfig) -> np.ndarray:
    """Discretised white-noise process covariance ``[2, 2]``."""
    dt, qc = config.dt, config.process_noise
    return qc * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])


def simulate_pendulum(config: FiltersConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Truth ``[B, T, 2]`` and measurements ``[B, T, 1]``."""
    b, t_sz = config.episodes, config.pendulum_steps
    chol = np.linalg.cholesky(pendulum_noise(config))
    x = np.zeros((b, 2))
    x[:, 0] = config.initial_angle + config.initial_std * rng.normal(size=b)
    x[:, 1] = config.initial_std * rng.normal(size=b)
    states = np.empty((b, t_sz, 2))
    for t in range(t_sz):
        if t > 0:
            x = pendulum_step(torch.from_numpy(x), config.dt).numpy()
            x = x + rng.normal(size=(b, 2)) @ chol.T
        states[:, t] = x
    noise = math.sqrt(config.measurement_noise) * rng.normal(size=(b, t_sz, 1))
    z = np.sin(states[..., :1]) + noise
    return states, z


def angle_rmse(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-track RMSE of the angle ``[B]`` (rad), errors wrapped to ``(-pi, pi]`` (an
    estimate a full turn away is the same pendulum)."""
    err = np.angle(np.exp(1j * (estimate[..., 0] - truth[..., 0])))
    return np.sqrt((err**2).mean(-1))


def pendulum_comparison(
    config: FiltersConfig, rng: np.random.Generator, device: torch.device
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run the four filters on one batch of simulated tracks.

    Returns ``(metrics, arrays)``: per filter the pooled angle RMSE (rad) and the median of
    the per-track RMSEs; arrays hold the truth, the measurements and the four estimates.
    """
    truth, z = simulate_pendulum(config, rng)
    zt = torch.from_numpy(z).to(device)
    q = pendulum_noise(config)
    r = np.array([[config.measurement_noise]])
    x0 = np.array([config.initial_angle, 0.0])
    p0 = config.initial_std**2 * np.eye(2)
    dt = config.dt
    a_lin = np.array([[1.0, dt], [-GRAVITY * dt, 1.0]])  # linearised about angle 0
    h_lin = np.array([[1.0, 0.0]])

    def step(x: torch.Tensor) -> torch.Tensor:
        return pendulum_step(x, dt)

    filters_: dict[str, Any] = {
        "KF (linearised)": KalmanFilter(a_lin, h_lin, q, r, initial_state_mean=x0,
                                        initial_state_covariance=p0),
        "EKF": ExtendedKalmanFilter(step, pendulum_measure, q, r, x0, p0),
        "UKF": UnscentedKalmanFilter(step, pendulum_measure, q, r, x0, p0),
        "PF": ParticleFilter(step, pendulum_measure, q, r, x0, p0,
                             n_particles=config.pf_particles, seed=config.seed),
    }
    estimates: dict[str, np.ndarray] = {}
    metrics: dict[str, Any] = {}
    for name, flt in tqdm(filters_.items(), desc="pendulum filters", leave=False):
        means, _ = flt.filter(zt)
        est = means.cpu().numpy()
        per_track = angle_rmse(est, truth)
        estimates[name] = est
        metrics[name] = {
            "angle_rmse": float(np.sqrt((per_track**2).mean())),
            "median_track_rmse": float(np.median(per_track)),
        }
        log.info("pendulum %-16s angle RMSE %.3f rad (median track %.3f)", name,
                 metrics[name]["angle_rmse"], metrics[name]["median_track_rmse"])
    return metrics, {"truth": truth, "measurements": z, **estimates}


def pendulum_figure(arrays: dict[str, np.ndarray], metrics: dict[str, Any], dt: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["KF (linearised)", "EKF", "UKF", "PF"]
    truth = arrays["truth"]
    # a large swing where the EKF does worst relative to the particle filter
    amplitude = np.abs(truth[..., 0]).max(-1)
    gap = angle_rmse(arrays["EKF"], truth) - angle_rmse(arrays["PF"], truth)
    track = int(np.argmax(np.where(amplitude > 1.5, gap, -np.inf)))
    t = np.arange(truth.shape[1]) * dt

    def near_truth(est: np.ndarray) -> np.ndarray:  # whole turns removed (same pendulum)
        return truth[track, :, 0] + np.angle(np.exp(1j * (est - truth[track, :, 0])))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    ax.plot(t, truth[track, :, 0], "k", lw=2.5, label="truth")
    for name, style in zip(names, ["C3:", "C0--", "C2-", "C1-."], strict=True):
        ax.plot(t, near_truth(arrays[name][track, :, 0]), style, lw=1.4, label=name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("angle (rad, estimates within a turn of the truth)")
    ax.set_title(f"large-angle pendulum, measured through sin(angle): track {track}", pad=24)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, fontsize=8, frameon=False)
    ax = axes[1]
    vals = [metrics[n]["angle_rmse"] for n in names]
    ax.bar(range(4), vals, color=["C3", "C0", "C2", "C1"])
    ax.set_xticks(range(4), ["KF\n(lin.)", "EKF", "UKF", "PF"])
    ax.set_xlabel("filter")
    ax.set_title(f"angle RMSE, all {len(truth)} tracks")
    ax.set_yscale("log")
    ax.set_ylabel("angle RMSE over all tracks (rad)")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


# -- (b) robot localisation ----------------------------------------------------------------
def unicycle_step(x: torch.Tensor, u: torch.Tensor, dt: float) -> torch.Tensor:
    """``x [B, 3]`` (x m, y m, heading rad), ``u [B, 2]`` (speed m/s, turn rate rad/s)."""
    heading = x[..., 2]
    return torch.stack(
        [
            x[..., 0] + u[..., 0] * torch.cos(heading) * dt,
            x[..., 1] + u[..., 0] * torch.sin(heading) * dt,
            heading + u[..., 1] * dt,
        ],
        -1,
    )


def ranges(x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Distances from positions ``[..., >=2]`` to each landmark ``[L, 2]``: ``[..., L]`` (m)."""
    d = x[..., None, :2] - landmarks
    return torch.sqrt((d * d).sum(-1))


def localisation_demo(
    config: FiltersConfig, rng: np.random.Generator, device: torch.device
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A robot drives a loop in the room; the particle filter starts from a uniform prior
    over the room and all headings and uses ranges to the known landmarks."""
    t_sz, dt = config.loc_steps, config.loc_dt
    kw = {"dtype": torch.float64, "device": device}
    lm = torch.as_tensor(LANDMARKS, **kw)
    # 1 m/s on a wobbly circle of about 5 m radius that stays inside the room
    controls = np.stack(
        [np.full(t_sz - 1, 1.0), 0.2 + 0.05 * np.sin(np.arange(t_sz - 1) * 0.3)], -1
    )
    odometry_std = np.array([0.05, 0.05, 0.02])  # per step: m, m, rad
    x = torch.tensor([[6.0, 4.5, 0.0]], **kw)
    truth = [x]
    for t in range(t_sz - 1):
        u = torch.as_tensor(controls[None, t], **kw)
        x = unicycle_step(x, u, dt) + torch.as_tensor(rng.normal(size=(1, 3)) * odometry_std, **kw)
        truth.append(x)
    truth_t = torch.cat(truth)  # [T, 3]
    true_ranges = ranges(truth_t, lm)
    z = true_ranges + config.range_std * torch.as_tensor(
        rng.normal(size=(t_sz, len(LANDMARKS))), **kw
    )
    z = torch.where(true_ranges <= config.sensor_range, z, torch.full_like(z, -1.0))
    sigma, reach = config.range_std, config.sensor_range

    def log_lik(particles: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
        """Seen landmarks (range >= 0): Gaussian; unseen (-1): the particle must be out of
        reach, soft edge ``sigma`` wide."""
        d = ranges(particles, lm)  # [B, N, L]
        seen = zz[:, None, :] >= 0
        gauss = -0.5 * ((d - zz[:, None, :]) / sigma) ** 2
        unseen = torch.nn.functional.logsigmoid(1.7 * (d - reach) / sigma)
        return torch.where(seen, gauss, unseen).sum(-1)

    def step(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return unicycle_step(p, u, dt)

    n = config.loc_particles
    init = np.column_stack(
        [rng.uniform(0, ROOM, n), rng.uniform(0, ROOM, n), rng.uniform(-math.pi, math.pi, n)]
    )
    pf = ParticleFilter(step, Q=np.diag(odometry_std**2), n_particles=n, log_likelihood=log_lik,
                        roughening=config.roughening, seed=config.seed)
    means, _ = pf.filter(z, controls=torch.as_tensor(controls, **kw),
                         initial_particles=torch.as_tensor(init, **kw), keep_history=True)
    assert pf.particle_history is not None and pf.weight_history is not None
    parts = pf.particle_history[0].cpu().numpy()  # [T, N, 3]
    weights = pf.weight_history[0].cpu().numpy()  # [T, N]
    est = means.cpu().numpy()
    heading = np.angle((weights * np.exp(1j * parts[..., 2])).sum(-1))  # circular mean
    truth_np = truth_t.cpu().numpy()
    pos_err = np.linalg.norm(est[:, :2] - truth_np[:, :2], axis=-1)
    head_err = np.abs(np.angle(np.exp(1j * (heading - truth_np[:, 2]))))
    spread = np.sqrt(np.einsum("tn,tns->t", weights, (parts[..., :2] - est[:, None, :2]) ** 2))
    below = np.nonzero(pos_err < 0.5)[0]
    converged = next((int(t) for t in below if np.all(pos_err[t:] < 1.0)), None)
    metrics = {
        "initial_position_error_m": float(pos_err[0]),
        "final_position_error_m": float(pos_err[-1]),
        "final_heading_error_rad": float(head_err[-1]),
        "mean_position_error_last_half_m": float(pos_err[t_sz // 2:].mean()),
        "final_particle_spread_m": float(spread[-1]),
        "converged_step": converged,
        "particles": n,
        "steps": t_sz,
        "resampling_steps": int(pf.resampled.sum()),  # type: ignore[union-attr]
    }
    log.info("localisation: position error %.2f m -> %.2f m, converged at step %s",
             pos_err[0], pos_err[-1], converged)
    arrays = {"truth": truth_np, "estimate": est, "heading": heading, "particles": parts,
              "weights": weights, "position_error": pos_err}
    return metrics, arrays


def localisation_figure(arrays: dict[str, np.ndarray]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, est, parts = arrays["truth"], arrays["estimate"], arrays["particles"]
    t_sz = truth.shape[0]
    shown = sorted({0, 1, 3, 6, t_sz // 3, t_sz - 1})
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3.2 * (len(shown) + 1), 3.4))
    rng = np.random.default_rng(0)
    for ax, t in zip(axes, shown, strict=False):
        sub = rng.choice(parts.shape[1], size=min(1500, parts.shape[1]), replace=False)
        ax.scatter(parts[t, sub, 0], parts[t, sub, 1], s=1, c="C0", alpha=0.4,
                   label="particles")
        ax.scatter(LANDMARKS[:, 0], LANDMARKS[:, 1], marker="^", c="k", s=40, label="landmarks")
        ax.plot(truth[: t + 1, 0], truth[: t + 1, 1], "g-", lw=1, label="true path")
        ax.plot(*truth[t, :2], "go", ms=7, label="true")
        ax.plot(*est[t, :2], "rx", ms=9, mew=2, label="estimate")
        ax.set_xlim(0, ROOM)
        ax.set_ylim(0, ROOM)
        ax.set_aspect("equal")
        ax.set_title(f"step {t}")
        ax.set_xticks([0, ROOM])
        ax.set_yticks([0, ROOM])
        ax.set_xlabel("x (m)")
    axes[0].set_ylabel("y (m)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8,
               frameon=False)
    ax = axes[-1]
    ax.semilogy(arrays["position_error"], "r")
    ax.set_xlabel("step")
    ax.set_ylabel("position error (m)")
    ax.set_title("error")
    fig.suptitle("particle filter localisation from a uniform prior (ranges to landmarks)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# -- stage ---------------------------------------------------------------------------------
def validate(config: FiltersConfig) -> None:
    """Value checks of the whole config (the CLI runs them before any work)."""
    for name in ("episodes", "pendulum_steps", "pf_particles", "loc_particles", "loc_steps"):
        if getattr(config, name) < 2:
            raise ValueError(f"{name} must be at least 2, got {getattr(config, name)}")
    for name in ("dt", "process_noise", "measurement_noise", "loc_dt", "range_std",
                 "sensor_range"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    if not (math.isfinite(config.initial_std) and config.initial_std >= 0):
        raise ValueError(f"initial_std must be >= 0, got {config.initial_std}")


def stage_evaluate(config: FiltersConfig, run: Run) -> None:
    """Both demonstrations: metrics.json sections ``pendulum`` and ``localisation``,
    figures ``pendulum.png`` and ``localisation.png``."""
    validate(config)
    device = resolve_device(config.device)
    rng = seed_everything(config.seed)
    metrics, arrays = pendulum_comparison(config, rng, device)
    run.update_metrics("pendulum", metrics)
    with run.optional_artefact("the pendulum figure"):
        save_figure(pendulum_figure(arrays, metrics, config.dt), run.figures / "pendulum.png")
    loc_metrics, loc_arrays = localisation_demo(config, rng, device)
    run.update_metrics("localisation", loc_metrics)
    with run.optional_artefact("the localisation figure"):
        save_figure(localisation_figure(loc_arrays), run.figures / "localisation.png")
    writer = run.writer()
    for name, vals in metrics.items():
        writer.add_scalar(f"pendulum/angle_rmse/{name}", vals["angle_rmse"], 0)
    for t, err in enumerate(loc_arrays["position_error"]):
        writer.add_scalar("localisation/position_error_m", float(err), t)


TASK = register_task(Task(
    name="filters",
    config_cls=FiltersConfig,
    presets={"default": FiltersConfig, "quick": quick_config},
    stages={"evaluate": stage_evaluate},
    validate=validate,
    description=__doc__ or "",
))
