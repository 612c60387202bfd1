"""Filters benchmark against pykalman and filterpy, side by side in one process.

    python benchmarks/bench_filters.py [--quick] [--only kalman|ukf|particle]

1. Kalman filter (and RTS smoother), 4-D constant velocity, 1,000 tracks x 1,000 steps:
   ours batched over tracks vs pykalman track by track and filterpy's predict/update
   loop. The peers are timed on a subset of tracks and extrapolated linearly to 1,000
   (each track is independent work for them); the output says so.
2. UKF on the large-angle pendulum, 2,000 steps: ours vs pykalman's
   AdditiveUnscentedKalmanFilter and filterpy's UnscentedKalmanFilter (Merwe points,
   the same alpha/beta/kappa), with the angle RMSE of each.
3. Particle filter, 10,000 particles x 200 steps of 2-D localisation (ranges to four
   landmarks, velocity controls): ours vs a loop built on filterpy.monte_carlo's
   systematic resampling (numpy, the filterpy book's recipe).

Timings are the best of a few repeats (the machine is shared by several jobs); torch
runs with one intra-op thread, like the numpy peers. Writes benchmarks/results/filters.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worldplan.checkpoint import atomic_write_text  # noqa: E402
from worldplan.filters import KalmanFilter, ParticleFilter, UnscentedKalmanFilter  # noqa: E402


def best_cpu_of(fn: Callable[[], Any], repeats: int) -> float:
    """Least CPU time (s) this process spent in one of ``repeats`` calls: less sensitive to
    other jobs on a shared machine than wall time (one intra-op thread, so CPU ~ wall when
    the core is free)."""
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest wall time (s) of ``repeats`` calls and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


# --------------------------------------------------------------------------- 1. Kalman
def cv_model(dt: float = 0.1) -> dict[str, np.ndarray]:
    f = np.eye(4)
    f[0, 2] = f[1, 3] = dt
    g = np.array([[dt**2 / 2, 0], [0, dt**2 / 2], [dt, 0], [0, dt]])
    return {
        "transition_matrix": f,
        "observation_matrix": np.eye(2, 4),
        "transition_covariance": g @ g.T * 0.5 + 1e-6 * np.eye(4),
        "observation_covariance": 0.25 * np.eye(2),
        "initial_state_mean": np.zeros(4),
        "initial_state_covariance": 10.0 * np.eye(4),
    }


def bench_kalman(quick: bool) -> dict[str, Any]:
    from filterpy.kalman import KalmanFilter as FilterpyKF
    from pykalman import KalmanFilter as PyKalman

    tracks, steps = 1000, 1000
    p = cv_model()
    kf = KalmanFilter(**p)
    _, z = kf.sample(steps, n_tracks=tracks, seed=0)
    repeats = 2 if quick else 3
    t_ours, (means, covs) = best_of(lambda: kf.filter(z), repeats)
    cpu_ours = best_cpu_of(lambda: kf.filter(z), repeats)
    t_ours_smooth, (smeans, _) = best_of(lambda: kf.smooth(z), repeats)
    zt = torch.from_numpy(z)
    t_torch, _ = best_of(lambda: kf.filter(zt), repeats)
    t_torch32, _ = best_of(lambda: kf.filter(zt.float()), repeats)

    n_pyk = 2 if quick else 5
    pk = PyKalman(
        transition_matrices=p["transition_matrix"],
        observation_matrices=p["observation_matrix"],
        transition_covariance=p["transition_covariance"],
        observation_covariance=p["observation_covariance"],
        initial_state_mean=p["initial_state_mean"],
        initial_state_covariance=p["initial_state_covariance"],
    )
    start = time.perf_counter()
    pk_means = [pk.filter(z[b])[0] for b in range(n_pyk)]
    t_pyk = (time.perf_counter() - start) / n_pyk * tracks
    start = time.perf_counter()
    pk_smooth = [pk.smooth(z[b])[0] for b in range(n_pyk)]
    t_pyk_smooth = (time.perf_counter() - start) / n_pyk * tracks
    err_pyk = max(float(np.abs(pk_means[b] - means[b]).max()) for b in range(n_pyk))
    err_pyk_s = max(float(np.abs(pk_smooth[b] - smeans[b]).max()) for b in range(n_pyk))

    n_fp = 5 if quick else 20

    def filterpy_track(zb: np.ndarray) -> np.ndarray:
        f = FilterpyKF(dim_x=4, dim_z=2)
        f.F, f.H = p["transition_matrix"], p["observation_matrix"]
        f.Q, f.R = p["transition_covariance"], p["observation_covariance"]
        f.x, f.P = p["initial_state_mean"].copy(), p["initial_state_covariance"].copy()
        out = np.empty((steps, 4))
        for t in range(steps):
            if t > 0:
                f.predict()
            f.update(zb[t])
            out[t] = f.x
        return out

    start = time.perf_counter()
    fp_means = [filterpy_track(z[b]) for b in range(n_fp)]
    t_fp = (time.perf_counter() - start) / n_fp * tracks
    err_fp = max(float(np.abs(fp_means[b] - means[b]).max()) for b in range(n_fp))
    return {
        "tracks": tracks,
        "steps": steps,
        "ours_filter_s": t_ours,
        "ours_filter_cpu_s": cpu_ours,
        "ours_filter_torch64_s": t_torch,
        "ours_filter_torch32_s": t_torch32,
        "ours_smooth_s": t_ours_smooth,
        "pykalman_filter_s": t_pyk,
        "pykalman_smooth_s": t_pyk_smooth,
        "filterpy_filter_s": t_fp,
        "speedup_vs_pykalman": t_pyk / t_ours,
        "speedup_vs_filterpy": t_fp / t_ours,
        "smooth_speedup_vs_pykalman": t_pyk_smooth / t_ours_smooth,
        "max_abs_diff_vs_pykalman": err_pyk,
        "max_abs_diff_smooth_vs_pykalman": err_pyk_s,
        "max_abs_diff_vs_filterpy": err_fp,
        "peers_extrapolated_from_tracks": {"pykalman": n_pyk, "filterpy": n_fp},
        "targets": {"speedup_vs_pykalman": 100, "speedup_vs_filterpy": 20, "ours_filter_s": 0.7},
    }


# --------------------------------------------------------------------------- 2. UKF
PEND = {"dt": 0.01, "g": 9.81, "qc": 0.1, "r": 0.1, "x0": (1.5, 0.0)}


def pendulum_data(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dt, g, qc = PEND["dt"], PEND["g"], PEND["qc"]
    q = qc * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(q)
    x = np.array(PEND["x0"])
    xs = np.empty((steps, 2))
    for t in range(steps):
        if t > 0:
            x = np.array([x[0] + x[1] * dt, x[1] - g * math.sin(x[0]) * dt]) + chol @ rng.normal(
                size=2
            )
        xs[t] = x
    z = np.sin(xs[:, :1]) + math.sqrt(PEND["r"]) * rng.normal(size=(steps, 1))
    return xs, z, q


def bench_ukf(quick: bool) -> dict[str, Any]:
    from filterpy.kalman import MerweScaledSigmaPoints
    from filterpy.kalman import UnscentedKalmanFilter as FilterpyUKF
    from pykalman import AdditiveUnscentedKalmanFilter

    steps = 2000
    dt, g = PEND["dt"], PEND["g"]
    xs, z, q = pendulum_data(steps)
    r = np.array([[PEND["r"]]])
    x0, p0 = np.array(PEND["x0"]), 0.1 * np.eye(2)
    alpha, beta, kappa = 1.0, 2.0, 0.0
    repeats = 2 if quick else 3

    # the Euler step written as batched tensor code: x @ [[1, 0], [dt, 1]] + sin(angle) * g'
    step_matrix = torch.tensor([[1.0, 0.0], [dt, 1.0]], dtype=torch.float64)
    gravity = torch.tensor([0.0, -g * dt], dtype=torch.float64)

    def f_t(x: torch.Tensor) -> torch.Tensor:
        return x @ step_matrix + torch.sin(x[:, :1]) * gravity

    def h_t(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x[:, :1])

    ukf = UnscentedKalmanFilter(f_t, h_t, q, r, x0, p0, alpha=alpha, beta=beta, kappa=kappa)
    t_ours, (m_ours, _) = best_of(lambda: ukf.filter(z), repeats)
    cpu_ours = best_cpu_of(lambda: ukf.filter(z), repeats)

    def f_np(x: np.ndarray, *_: Any) -> np.ndarray:
        return np.array([x[0] + x[1] * dt, x[1] - g * math.sin(x[0]) * dt])

    def h_np(x: np.ndarray, *_: Any) -> np.ndarray:
        return np.array([math.sin(x[0])])

    pk = AdditiveUnscentedKalmanFilter(
        transition_functions=f_np, observation_functions=h_np, transition_covariance=q,
        observation_covariance=r, initial_state_mean=x0, initial_state_covariance=p0,
    )
    t_pyk, (m_pyk, _) = best_of(lambda: pk.filter(z), 1)

    def filterpy_run() -> np.ndarray:
        pts = MerweScaledSigmaPoints(2, alpha=alpha, beta=beta, kappa=kappa)
        fu = FilterpyUKF(dim_x=2, dim_z=1, dt=dt, fx=lambda x, _dt: f_np(x), hx=h_np, points=pts)
        fu.x, fu.P, fu.Q, fu.R = x0.copy(), p0.copy(), q, r
        out = np.empty((steps, 2))
        for t in range(steps):
            if t > 0:
                fu.predict()
            fu.update(z[t])
            out[t] = fu.x
        return out

    t_fp, m_fp = best_of(filterpy_run, repeats)
    cpu_fp = best_cpu_of(filterpy_run, repeats)

    def rmse(m: np.ndarray) -> float:
        return float(np.sqrt(((m[:, 0] - xs[:, 0]) ** 2).mean()))

    # the same filter on a batch of tracks: one batched run vs filterpy track by track
    n_batch = 100
    z_batch = np.stack([pendulum_data(steps, seed=1 + i)[1] for i in range(n_batch)])
    t_batch, _ = best_of(lambda: ukf.filter(z_batch), 1)

    return {
        "batch_tracks": n_batch,
        "ours_batch_s": t_batch,
        "filterpy_batch_s_extrapolated": t_fp * n_batch,
        "batch_speedup_vs_filterpy": t_fp * n_batch / t_batch,
        "steps": steps,
        "ours_s": t_ours,
        "ours_cpu_s": cpu_ours,
        "filterpy_cpu_s": cpu_fp,
        "cpu_speedup_vs_filterpy": cpu_fp / cpu_ours,
        "pykalman_s": t_pyk,
        "filterpy_s": t_fp,
        "speedup_vs_pykalman": t_pyk / t_ours,
        "speedup_vs_filterpy": t_fp / t_ours,
        "rmse_ours": rmse(m_ours),
        "rmse_pykalman": rmse(m_pyk),
        "rmse_filterpy": rmse(m_fp),
        "sigma_points": {"alpha": alpha, "beta": beta, "kappa": kappa},
        "note": "pykalman's additive UKF uses its own default sigma-point weights",
    }


# --------------------------------------------------------------------------- 3. PF
LANDMARKS = np.array([[-5.0, -5.0], [15.0, -3.0], [12.0, 14.0], [-4.0, 12.0]])


def localisation_data(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = np.stack([np.cos(np.arange(steps) * 0.05), np.sin(np.arange(steps) * 0.05)], -1) * 0.5
    x = np.array([1.0, 1.0])
    xs = np.empty((steps, 2))
    for t in range(steps):
        if t > 0:
            x = x + u[t - 1] + rng.normal(scale=0.1, size=2)
        xs[t] = x
    z = np.linalg.norm(xs[:, None] - LANDMARKS, axis=-1) + rng.normal(scale=0.3, size=(steps, 4))
    return xs, z, u[: steps - 1]


def bench_pf(quick: bool) -> dict[str, Any]:
    from filterpy.monte_carlo import systematic_resample as fp_systematic

    n, steps = 10_000, 200
    xs, z, u = localisation_data(steps)
    q = 0.01 * np.eye(2)
    sigma = 0.3
    repeats = 2 if quick else 3

    def run_ours(dtype: torch.dtype) -> tuple[np.ndarray, float]:
        lm = torch.as_tensor(LANDMARKS, dtype=dtype)

        lx, ly = lm[:, 0], lm[:, 1]
        scale = torch.full((len(LANDMARKS),), -0.5 / sigma**2, dtype=dtype)

        def loglik(p: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
            dx, dy = p[..., 0:1] - lx, p[..., 1:2] - ly  # [B, N, 4]
            res = torch.sqrt(dx * dx + dy * dy) - zz.unsqueeze(1)
            # the weighted sum over the 4 landmarks as a product: a reduction over a
            # last dimension of 4 is slow in torch
            return (res * res) @ scale

        pf = ParticleFilter(
            lambda x, uu: x + uu, Q=q, x0=np.array([1.0, 1.0]), P0=np.eye(2),
            n_particles=n, log_likelihood=loglik, seed=0,
        )
        zt = torch.as_tensor(z, dtype=dtype)
        ut = torch.as_tensor(u, dtype=dtype)
        t, (m, _) = best_of(lambda: pf.filter(zt, controls=ut), repeats)
        cpu = best_cpu_of(lambda: pf.filter(zt, controls=ut), repeats)
        return m.numpy(), t, cpu

    m64, t64, cpu64 = run_ours(torch.float64)
    m32, t32, cpu32 = run_ours(torch.float32)

    scale_np = np.full(len(LANDMARKS), -0.5 / sigma**2)

    def filterpy_loop() -> np.ndarray:
        rng = np.random.default_rng(0)
        parts = np.array([1.0, 1.0]) + rng.normal(size=(n, 2))
        w = np.full(n, 1.0 / n)
        out = np.empty((steps, 2))
        chol = np.linalg.cholesky(q)
        for t in range(steps):
            if t > 0:
                parts = parts + u[t - 1] + rng.normal(size=(n, 2)) @ chol.T
            dx, dy = parts[:, 0:1] - LANDMARKS[:, 0], parts[:, 1:2] - LANDMARKS[:, 1]
            res = np.sqrt(dx * dx + dy * dy) - z[t]  # the same formula as ours
            lw = (res * res) @ scale_np
            w = w * np.exp(lw - lw.max())
            w /= w.sum()
            out[t] = w @ parts
            if 1.0 / np.sum(w**2) < n / 2:
                idx = fp_systematic(w)
                parts = parts[idx]
                w = np.full(n, 1.0 / n)
        return out

    t_fp, m_fp = best_of(filterpy_loop, repeats)
    cpu_fp = best_cpu_of(filterpy_loop, repeats)

    def rmse(m: np.ndarray) -> float:
        return float(np.sqrt(((m - xs) ** 2).sum(-1).mean()))

    return {
        "particles": n,
        "steps": steps,
        "ours_float64_s": t64,
        "ours_float32_s": t32,
        "filterpy_loop_s": t_fp,
        "ours_float64_cpu_s": cpu64,
        "ours_float32_cpu_s": cpu32,
        "filterpy_loop_cpu_s": cpu_fp,
        "speedup_float64_vs_filterpy": t_fp / t64,
        "speedup_float32_vs_filterpy": t_fp / t32,
        "rmse_ours_float64": rmse(m64),
        "rmse_ours_float32": rmse(m32),
        "rmse_filterpy_loop": rmse(m_fp),
        "target_s": 0.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and peer tracks")
    parser.add_argument("--only", choices=("kalman", "ukf", "particle"),
                        help="run one section (prints it; writes no JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "load_average": os.getloadavg()},
        "quick": args.quick,
    }
    print(f"load average (1/5/15 min): {os.getloadavg()}")
    if args.only in (None, "kalman"):
        print("Kalman filter, 4-D constant velocity, 1,000 tracks x 1,000 steps")
        k = bench_kalman(args.quick)
        results["kalman"] = k
        ext = k["peers_extrapolated_from_tracks"]
        print(f"  ours (numpy float64 in)  filter {k['ours_filter_s']:.3f} s "
              f"(CPU {k['ours_filter_cpu_s']:.3f} s)   smooth "
              f"{k['ours_smooth_s']:.3f} s   (torch f64 {k['ours_filter_torch64_s']:.3f} s, "
              f"torch f32 {k['ours_filter_torch32_s']:.3f} s)")
        print(f"  pykalman track by track  filter {k['pykalman_filter_s']:.1f} s   smooth "
              f"{k['pykalman_smooth_s']:.1f} s   (timed on {ext['pykalman']} tracks, "
              f"x{1000 // ext['pykalman']})")
        print(f"  filterpy predict/update  filter {k['filterpy_filter_s']:.1f} s   "
              f"(timed on {ext['filterpy']} tracks, x{1000 // ext['filterpy']})")
        print(f"  speed-up: {k['speedup_vs_pykalman']:.0f}x pykalman (target 100x), "
              f"{k['speedup_vs_filterpy']:.0f}x filterpy (target 20x); smoother "
              f"{k['smooth_speedup_vs_pykalman']:.0f}x pykalman")
        print(f"  max |ours - pykalman| filter {k['max_abs_diff_vs_pykalman']:.1e}, smooth "
              f"{k['max_abs_diff_smooth_vs_pykalman']:.1e}; |ours - filterpy| "
              f"{k['max_abs_diff_vs_filterpy']:.1e}")
    if args.only in (None, "ukf"):
        print("\nUKF, large-angle pendulum, 2,000 steps (one track)")
        uk = bench_ukf(args.quick)
        results["ukf"] = uk
        print(f"  {'':10s} {'time (s)':>9s} {'angle RMSE':>11s}")
        print(f"  {'ours':10s} {uk['ours_s']:9.3f} {uk['rmse_ours']:11.4f}")
        print(f"  {'pykalman':10s} {uk['pykalman_s']:9.3f} {uk['rmse_pykalman']:11.4f}"
              f"   ({uk['speedup_vs_pykalman']:.1f}x)")
        print(f"  {'filterpy':10s} {uk['filterpy_s']:9.3f} {uk['rmse_filterpy']:11.4f}"
              f"   ({uk['speedup_vs_filterpy']:.1f}x)")
        print(f"  CPU time: ours {uk['ours_cpu_s']:.3f} s, filterpy {uk['filterpy_cpu_s']:.3f} s "
              f"({uk['cpu_speedup_vs_filterpy']:.1f}x)")
        print(f"  {uk['batch_tracks']} tracks: ours batched {uk['ours_batch_s']:.2f} s, filterpy "
              f"{uk['filterpy_batch_s_extrapolated']:.1f} s (one track x{uk['batch_tracks']}): "
              f"{uk['batch_speedup_vs_filterpy']:.0f}x")
    if args.only in (None, "particle"):
        print("\nParticle filter, 10,000 particles x 200 steps, 2-D localisation")
        pf = bench_pf(args.quick)
        results["particle"] = pf
        print(f"  {'':14s} {'wall (s)':>9s} {'CPU (s)':>8s} {'RMSE (m)':>9s}")
        print(f"  {'ours float64':14s} {pf['ours_float64_s']:9.3f} {pf['ours_float64_cpu_s']:8.3f} "
              f"{pf['rmse_ours_float64']:9.3f}   ({pf['speedup_float64_vs_filterpy']:.1f}x wall)")
        print(f"  {'ours float32':14s} {pf['ours_float32_s']:9.3f} {pf['ours_float32_cpu_s']:8.3f} "
              f"{pf['rmse_ours_float32']:9.3f}   ({pf['speedup_float32_vs_filterpy']:.1f}x wall)"
              "   target <= 0.2 s")
        print(f"  {'filterpy loop':14s} {pf['filterpy_loop_s']:9.3f} "
              f"{pf['filterpy_loop_cpu_s']:8.3f} {pf['rmse_filterpy_loop']:9.3f}")
    results["machine"]["load_average_end"] = os.getloadavg()
    print(f"load average (1/5/15 min) at the end: {results['machine']['load_average_end']}")
    if args.only is not None:
        return
    path = ROOT / "benchmarks" / "results" / "filters.json"
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
