"""Dense-traffic simulation speed: worldplan's DenseTraffic against highway-env.

Both simulate a 6-lane road with 100+ IDM + MOBIL cars and render the ego's
observation; the figure is simulated seconds per wall-clock second, measured side by
side in one process (timings on this shared machine are noisy, so the ratio is what
counts). Also measured: our data-collection mode, which renders every car's view.

    python benchmarks/bench_highway.py [--quick]

Writes benchmarks/results/highway.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from worldplan.envs.highway import Traffic, View, render_views


def ours(sim_seconds: float, all_views: bool = False, seed: int = 0) -> dict:
    """Simulated seconds per wall second of our traffic with the ego view (or every
    car's view) rendered at every 0.1 s step."""
    t = Traffic(seed=seed)
    t.populate()
    for _ in range(300):  # reach the congested steady state first (not timed)
        t.step()
        t.exit_and_spawn()
    ego = int(t.ids[np.argmin(t.pos[:, 0])])
    view = View()
    steps = int(round(sim_seconds / t.config.dt))
    counts = []
    start = time.perf_counter()
    for _ in range(steps):
        i = np.flatnonzero(t.ids == ego)
        if len(i) == 0:
            ego = int(t.ids[np.argmin(t.pos[:, 0])])
            i = np.flatnonzero(t.ids == ego)
        t.step()
        t.exit_and_spawn()
        size = np.stack([t.length, t.width], 1)
        which = np.arange(t.n) if all_views else np.flatnonzero(t.ids == ego)
        render_views(t.pos[which], t.heading[which], size[which], t.pos, t.heading, size,
                     which, t.road, view)
        counts.append(t.n)
    wall = time.perf_counter() - start
    return {"sim_seconds": steps * t.config.dt, "wall_seconds": wall,
            "sim_per_wall": steps * t.config.dt / wall, "mean_vehicles": float(np.mean(counts)),
            "views_per_step": float(np.mean(counts)) if all_views else 1.0}


def highway_env_peer(sim_seconds: float, observation: str, seed: int = 0) -> dict:
    """highway-env's highway-v0 with 6 lanes and 100 IDM+MOBIL vehicles, stepped with
    the idle action; ``observation`` = ``Kinematics`` or ``GrayscaleObservation``."""
    import gymnasium as gym
    import highway_env  # noqa: F401

    obs_cfg: dict = {"type": observation}
    if observation == "GrayscaleObservation":
        obs_cfg.update(observation_shape=(117, 24), stack_size=1,
                       weights=[0.2989, 0.5870, 0.1140], scaling=1.6)
    env = gym.make("highway-v0", config={
        "lanes_count": 6, "vehicles_count": 100, "observation": obs_cfg,
        "other_vehicles_type": "highway_env.vehicle.behavior.IDMVehicle",
        "simulation_frequency": 10, "policy_frequency": 1, "duration": 10_000,
        "offroad_terminal": False})
    env.reset(seed=seed)
    n_vehicles = len(env.unwrapped.road.vehicles)
    idle = 1  # DiscreteMetaAction IDLE
    freq = env.unwrapped.config["policy_frequency"]
    steps = int(round(sim_seconds * freq))
    start = time.perf_counter()
    done = 0
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(idle)
        done += 1
        if term or trunc:  # a crash of the ego: the clock keeps running, start again
            env.reset(seed=seed + done)
    wall = time.perf_counter() - start
    env.close()
    return {"sim_seconds": steps / freq, "wall_seconds": wall, "sim_per_wall": steps / freq / wall,
            "mean_vehicles": n_vehicles, "simulation_frequency_hz": 10,
            "observation": observation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/highway.json"))
    args = parser.parse_args()
    sim = 10.0 if args.quick else 60.0
    peer_sim = 5.0 if args.quick else 20.0
    results = {
        "ours_ego_view": ours(sim),
        "ours_every_car_view": ours(sim / 5, all_views=True),
        "highway_env_kinematics": highway_env_peer(peer_sim, "Kinematics"),
        "highway_env_grayscale_image": highway_env_peer(peer_sim, "GrayscaleObservation"),
    }
    ratio = results["ours_ego_view"]["sim_per_wall"] / \
        results["highway_env_grayscale_image"]["sim_per_wall"]
    ratio_k = results["ours_ego_view"]["sim_per_wall"] / \
        results["highway_env_kinematics"]["sim_per_wall"]
    results["speedup_vs_highway_env_image"] = ratio
    results["speedup_vs_highway_env_kinematics"] = ratio_k
    results["goal"] = ">= 10x highway-env's simulated seconds per wall second"
    head = f"{'simulator':34s} {'vehicles':>9s} {'sim s':>7s} {'wall s':>8s}"
    print(f"{head} {'sim s / wall s':>15s}")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:34s} {r['mean_vehicles']:9.0f} {r['sim_seconds']:7.1f} "
                  f"{r['wall_seconds']:8.2f} {r['sim_per_wall']:15.2f}")
    print(f"speed-up, ego view vs highway-env (image obs): {ratio:.1f}x; "
          f"vs highway-env (kinematics obs): {ratio_k:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from worldplan.worldmodels.checkpoint import atomic_write_text

    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
