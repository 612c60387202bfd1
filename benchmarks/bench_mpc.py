"""MPC speed and quality: our MPPI and CEM against pytorch_mppi, and planning latency with
a learned world model.

1. MPPI and CEM on ``Pendulum-v1`` with the true dynamics (torch), 1,000 samples, horizon
   15, temperature 1, noise std 1, 200 steps from gymnasium's seeded random starts: ours
   (eager MPPI, eager CEM with one iteration per control step, compiled MPPI) and
   pytorch_mppi with the same settings and the same objective, episode by episode in one
   process (timings on this shared machine are noisy: the ratio is what counts; the load
   average is printed at the start and the end).
2. Planning latency per control step of every planner (CEM, MPPI, gradient, iLQR) with
   a learned world model of ``InvertedPendulum-v5``'s size (the ensemble of
   ``worldplan mujoco``'s default config; the cVAE for ``--model cvae``) at batch 1 and 64.

    python benchmarks/bench_mpc.py [--quick] [--skip-latency] [--floor]

``--floor`` times, per control step and interleaved, our planners, pytorch_mppi and the
parts that no eager planner avoids with these callables (see :func:`floor`).

Writes benchmarks/results/mpc.json (not with --skip-latency).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from worldplan.envs.gym_tasks import PendulumTaskModel, make_env
from worldplan.planners.mpc import CEM, MPPI, Planner

RESULTS = Path(__file__).resolve().parent / "results" / "mpc.json"
SAMPLES, HORIZON, STEPS, LAMBDA, SIGMA = 1000, 15, 200, 1.0, 1.0
NAMES = ("ours", "ours_cem", "ours_compiled", "pytorch_mppi")
CEM_ELITES, CEM_ITERATIONS = 50, 1


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _episode(env, act, seed: int) -> tuple[float, float]:
    """Return and mean planning ms/step of one episode driven by ``act(obs [3]) -> [1]``."""
    obs, _ = env.reset(seed=seed)
    total, times = 0.0, []
    for _ in range(STEPS):
        start = time.perf_counter()
        action = act(obs)
        times.append(time.perf_counter() - start)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        if terminated or truncated:
            break
    return total, 1000 * float(np.mean(times))


def mppi_side_by_side(seeds: list[int]) -> dict:
    from pytorch_mppi import MPPI as PeerMPPI

    tm = PendulumTaskModel()
    env = make_env("Pendulum-v1")

    def peer_cost(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # pytorch_mppi charges the running cost on the state *after* the action; ours on the
        # state before it plus the terminal cost: the same objective up to a constant.
        return tm.state_cost(state) + tm.action_cost(action)

    def ours_planner(compile_: bool) -> MPPI:
        return MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, HORIZON,
                    terminal_cost=tm.state_cost, samples=SAMPLES, temperature=LAMBDA,
                    noise_sigma=SIGMA**2, compile=compile_)

    cem = CEM(tm.step, tm.cost, tm.action_low, tm.action_high, HORIZON,
              terminal_cost=tm.state_cost, samples=SAMPLES, elites=CEM_ELITES,
              iterations=CEM_ITERATIONS, keep_elites=0.2)
    planners = {"ours": ours_planner(False), "ours_cem": cem, "ours_compiled": ours_planner(True)}
    peer = PeerMPPI(tm.step, peer_cost, 3, torch.tensor([[SIGMA**2]]), num_samples=SAMPLES,
                    horizon=HORIZON, lambda_=LAMBDA, u_min=tm.action_low, u_max=tm.action_high)
    start = time.perf_counter()
    with torch.no_grad():
        planners["ours_compiled"].plan(torch.tensor([[1.0, 0.0, 0.0]]))
    compile_s = time.perf_counter() - start
    print(f"  torch.compile of our rollout: {compile_s:.1f} s (once, not in the timings)")

    def act_ours(obs: np.ndarray, planner: Planner) -> np.ndarray:
        with torch.no_grad():
            return planner.act(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()

    def act_peer(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return peer.command(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    rows = []
    for seed in seeds:
        for planner in planners.values():
            planner.reset(seed=seed)
        torch.manual_seed(seed)  # pytorch_mppi draws from the global generator
        peer.reset()
        order = [("ours", lambda o: act_ours(o, planners["ours"])),
                 ("ours_cem", lambda o: act_ours(o, planners["ours_cem"])),
                 ("ours_compiled", lambda o: act_ours(o, planners["ours_compiled"])),
                 ("pytorch_mppi", act_peer)]
        if seed % 2:  # alternate the order so that drifts in machine load hit all alike
            order.reverse()
        row = {"seed": seed}
        for name, act in order:
            ret, ms = _episode(env, act, seed)
            row[f"{name}_return"], row[f"{name}_ms"] = ret, ms
        rows.append(row)
        print(f"  seed {seed}: " + "   ".join(
            f"{n} {row[n + '_return']:7.1f} ({row[n + '_ms']:.2f} ms)" for n in NAMES),
            flush=True)
    env.close()
    out = {"settings": {"samples": SAMPLES, "horizon": HORIZON, "steps": STEPS,
                        "lambda": LAMBDA, "noise_sigma": SIGMA}, "episodes": rows,
           "compile_seconds": compile_s}
    for name in NAMES:
        out[f"{name}_mean_return"] = float(np.mean([r[f"{name}_return"] for r in rows]))
        out[f"{name}_worst_return"] = float(np.min([r[f"{name}_return"] for r in rows]))
        out[f"{name}_ms_per_step"] = float(np.mean([r[f"{name}_ms"] for r in rows]))
    for name in ("ours", "ours_cem", "ours_compiled"):
        out[f"time_ratio_{name}_over_peer"] = (out[f"{name}_ms_per_step"]
                                               / out["pytorch_mppi_ms_per_step"])
    return out


def floor(seeds: list[int]) -> dict:
    """Per control step, interleaved on the same observations (the episode driven by our
    MPPI; the order of the timed calls alternates): our MPPI and CEM, pytorch_mppi, and
    the parts no eager planner avoids with these callables: pytorch_mppi's 15 dynamics
    calls alone on its own tensors (its last rollout's actions), and our rollout alone
    (the 15 dynamics calls, the one running-cost and the terminal-cost call on our
    column buffers) with the 15,000 normal draws. Medians in ms."""
    from pytorch_mppi import MPPI as PeerMPPI

    tm = PendulumTaskModel()
    env = make_env("Pendulum-v1")
    mppi = MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, HORIZON,
                terminal_cost=tm.state_cost, samples=SAMPLES, temperature=LAMBDA,
                noise_sigma=SIGMA**2)
    cem = CEM(tm.step, tm.cost, tm.action_low, tm.action_high, HORIZON,
              terminal_cost=tm.state_cost, samples=SAMPLES, elites=CEM_ELITES,
              iterations=CEM_ITERATIONS, keep_elites=0.2)
    peer = PeerMPPI(tm.step, lambda x, u: tm.state_cost(x) + tm.action_cost(u), 3,
                    torch.tensor([[SIGMA**2]]), num_samples=SAMPLES, horizon=HORIZON,
                    lambda_=LAMBDA, u_min=tm.action_low, u_max=tm.action_high)
    draws = torch.empty(1, SAMPLES, HORIZON, 1)
    g = torch.Generator().manual_seed(0)

    def peer_dynamics(x: torch.Tensor) -> None:
        state = peer.state.view(1, -1).expand(SAMPLES, -1)
        for t in range(HORIZON):
            state = tm.step(state, peer.u_scale * peer.perturbed_action[:, t])

    def our_rollout(x: torch.Tensor) -> None:
        draws.normal_(generator=g)
        mppi._rollout_columns(x, mppi._fast_rollout(x, mppi._buffers.cand, SAMPLES))

    calls = {"ours": lambda x: mppi.act(x), "ours_cem": lambda x: cem.act(x),
             "pytorch_mppi": lambda x: peer.command(x[0]),
             "peer_dynamics_only": peer_dynamics, "our_rollout_and_draws": our_rollout}
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for seed in seeds:
            for planner in (mppi, cem):
                planner.reset(seed=seed)
            torch.manual_seed(seed)
            peer.reset()
            obs, _ = env.reset(seed=seed)
            for step in range(STEPS):
                x = torch.as_tensor(obs, dtype=torch.float32)[None]
                order = list(calls.items())
                if step % 2:
                    order.reverse()
                action = None
                for name, fn in order:
                    if name in ("peer_dynamics_only", "our_rollout_and_draws") and step == 0:
                        continue  # needs the peer's/our buffers of a first step
                    start = time.perf_counter()
                    out = fn(x)
                    times[name].append(time.perf_counter() - start)
                    if name == "ours":
                        action = out
                obs, _, terminated, truncated, _ = env.step(action[0].numpy())
                if terminated or truncated:
                    break
    env.close()
    med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return {"ms_median": med,
            "ratio_to_peer": {k: v / med["pytorch_mppi"] for k, v in med.items()},
            "steps": len(times["ours"])}


def latency(batch_sizes: list[int], repeats: int) -> list[dict]:
    """Planning ms per control step with a learned InvertedPendulum-sized world model."""
    from worldplan.envs.gym_tasks import make_task_model
    from worldplan.experiments.mujoco import ModelSettings
    from worldplan.planners.mpc.factory import MPCSettings, build_planner, model_dynamics
    from worldplan.worldmodels.ensemble import Ensemble
    from worldplan.worldmodels.stochastic import StochasticModel

    env_id = "InvertedPendulum-v5"
    tm = make_task_model(env_id)
    ms = ModelSettings()
    hidden = ms.hidden or tm.planning["hidden"]
    torch.manual_seed(0)
    models = {
        "ensemble": Ensemble(tm.state_dim, tm.action_dim, k=ms.k, hidden=hidden,
                             layers=ms.layers, dropout=ms.dropout),
        "cvae": StochasticModel(tm.state_dim, tm.action_dim, hidden=hidden,
                                layers=ms.layers, dropout=ms.dropout, z_dim=ms.z_dim),
    }
    rows = []
    for model_name, model in models.items():
        dynamics, latent, unc = model_dynamics(model)
        for planner_name in ("cem", "mppi", "gradient", "ilqr"):
            if latent and planner_name == "ilqr":
                continue
            planner = build_planner(planner_name, dynamics, tm, MPCSettings(), tm.planning,
                                    latent_dim=latent, uncertainty=unc)
            for b in batch_sizes:
                state = 0.01 * torch.randn(b, tm.state_dim,
                                           generator=torch.Generator().manual_seed(b))
                planner.reset()
                planner.act(state)  # warm-up (validation, allocations)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    planner.act(state)
                    times.append(time.perf_counter() - start)
                row = {"model": model_name, "planner": planner_name, "batch": b,
                       "horizon": planner.horizon, "ms_per_step": 1000 * float(np.median(times)),
                       "ms_per_problem": 1000 * float(np.median(times)) / b}
                rows.append(row)
                print(f"  {model_name:9s} {planner_name:9s} batch {b:3d}: "
                      f"{row['ms_per_step']:8.1f} ms/step ({row['ms_per_problem']:.2f} ms per "
                      "problem)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, fewer repeats")
    parser.add_argument("--skip-latency", action="store_true",
                        help="only the side-by-side run (writes no JSON)")
    parser.add_argument("--floor", action="store_true",
                        help="only the per-step breakdown against pytorch_mppi (no JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    print(f"load average (1/5/15 min): {_loadavg()}")
    if args.floor:
        out = floor(seeds)
        print(f"per control step, medians of {out['steps']} interleaved steps:")
        for name, ms in out["ms_median"].items():
            print(f"  {name:24s}{ms:8.3f} ms{out['ratio_to_peer'][name]:8.3f} x pytorch_mppi")
        print(f"load average (1/5/15 min): {_loadavg()}")
        return
    print(f"MPPI and CEM on Pendulum-v1, true dynamics, {SAMPLES} samples, horizon {HORIZON}, "
          f"{STEPS} steps, torch threads 1")
    side = mppi_side_by_side(seeds)
    print(f"\n{'':14s}{'mean return':>12s}{'worst':>10s}{'ms/step':>10s}")
    for name in NAMES:
        print(f"{name:14s}{side[f'{name}_mean_return']:12.1f}{side[f'{name}_worst_return']:10.1f}"
              f"{side[f'{name}_ms_per_step']:10.2f}")
    print(f"time ratio over pytorch_mppi: MPPI {side['time_ratio_ours_over_peer']:.2f}, "
          f"CEM {side['time_ratio_ours_cem_over_peer']:.2f}, "
          f"compiled MPPI {side['time_ratio_ours_compiled_over_peer']:.2f}")
    side["loadavg"] = _loadavg()
    print(f"load average (1/5/15 min): {side['loadavg']}\n")
    if args.skip_latency:
        return
    print("Planning latency per control step, learned InvertedPendulum-v5 model "
          "(untrained weights; latency does not depend on them)")
    lat = latency([1, 64], repeats=3 if args.quick else 10)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from worldplan.checkpoint import atomic_write_text

    atomic_write_text(RESULTS, json.dumps({"mppi_pendulum": side, "latency": lat,
                                           "quick": args.quick,
                                           "pets_anchor_s_per_step": 89.0}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
