"""Dense-traffic simulation speed: worldplan's DenseTraffic against highway-env.

Both simulate a 6-lane road with 100+ IDM + MOBIL cars and render the ego's
observation; the figure is simulated seconds per wall-clock second, measured side by
side in one process (timings on this shared machine are noisy, so the ratio is what
counts). Also measured: our data-collection mode, which renders every car's view.

    python benchmarks/bench_highway.py [--quick]
    python benchmarks/bench_highway.py --mpc-cache [--model RUN/checkpoints/model-.../best.pt]
    python benchmarks/bench_highway.py --replay-render

Writes benchmarks/results/highway.json. ``--mpc-cache`` instead measures gradient MPC
through the ego-motion model with and without the scene cache (experiments/highway_mpc.py)
side by side on the same contexts: CPU seconds per plan and the cost of the chosen plans
under a full model rollout (benchmarks/results/highway_mpc_cache.json).
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


def mpc_cache(model_path: Path | None, batch: int = 16, calls: int = 6, horizon: int = 5,
              iterations: int = 5, seed: int = 0) -> dict:
    """CPU seconds per ``act`` and the full-rollout cost of the plans, with and without
    the scene cache, alternating on the same contexts (a short recording's egos)."""
    import torch

    from worldplan.envs.highway import record_traffic
    from worldplan.envs.highway.replay import ReplayBatch
    from worldplan.experiments.highway import cost_fn, u_map
    from worldplan.experiments.highway_mpc import SceneCacheMPC
    from worldplan.worldmodels.base import load_model
    from worldplan.worldmodels.ego_motion import EgoMotionImageModel

    torch.manual_seed(seed)
    view = View(offroad=True)
    if model_path is not None:
        model = load_model(model_path, torch.device("cpu"))
    else:  # untrained: the timing does not depend on the weights
        model = EgoMotionImageModel(4, 2, (4, 117, 24), ncond=2, z_dim=8, hidden=64,
                                    channels=(8, 16, 16), flow_prior="cost-volume", dropout=0.1)
    model.eval()
    rec = record_traffic(400, warmup=300, seed=seed + 77, progress=False)
    cars = rec.complete_cars()[:batch]
    if len(cars) < batch:
        cars = np.flatnonzero(rec.valid[100])[:batch]
    starts = np.array([max(rec.span(int(c))[0], 0) for c in cars])
    rb = ReplayBatch(rec, cars, starts, view)
    frames, states = [], []
    for _ in range(model.ncond + 20):
        imgs, st, _ = rb.step(rec.action[np.minimum(rb.ego.time, rec.steps - 1), cars])
        frames.append(np.moveaxis(imgs, -1, 1))
        states.append(st)
    fr = torch.as_tensor(np.stack(frames[-model.ncond:], 1)).float() / 255.0
    st = torch.as_tensor(np.stack(states[-model.ncond:], 1), dtype=torch.float32)
    low, high = torch.tensor([-3.0, -0.01]), torch.tensor([3.0, 0.01])
    out: dict = {"batch": batch, "horizon": horizon, "iterations": iterations, "calls": calls,
                 "trained_model": model_path is not None}
    planners = {name: SceneCacheMPC(model, cost_fn(view, 0.2), u_map(view), low, high,
                                    horizon, iterations, 0.1, 0.1, 2, cache=cache)
                for name, cache in (("cached", True), ("full", False))}
    times = {name: 0.0 for name in planners}
    costs = {name: [] for name in planners}
    for _ in range(calls):
        for name, planner in planners.items():
            planner.reset()
            t0 = time.process_time()
            planner.act(st, fr)
            times[name] += time.process_time() - t0
            costs[name].append(planners["full"].plan_cost(st, fr, planner.chosen).mean().item())
    for name in planners:
        out[f"{name}_cpu_s_per_plan"] = times[name] / calls
        out[f"{name}_plan_cost_full_model"] = float(np.mean(costs[name]))
    out["speedup"] = out["full_cpu_s_per_plan"] / out["cached_cpu_s_per_plan"]
    return out


def replay_rendering(egos: int = 60, steps: int = 40, seed: int = 0) -> dict:
    """CPU seconds to render the views of ``egos`` egos of one replay batch (each at its
    own recording step) for ``steps`` steps: one ``render_views`` call per distinct
    recording step (egos grouped by step) against one ``render_pairs`` call for all
    (``ReplayBatch.observe``), side by side on the same states."""
    from worldplan.envs.highway import record_traffic
    from worldplan.envs.highway.replay import ReplayBatch

    rec = record_traffic(900, warmup=300, seed=seed + 5, progress=False)
    cars = rec.complete_cars()[:egos]
    starts = np.array([rec.span(int(c))[0] for c in cars])
    view = View(offroad=True)
    batch = ReplayBatch(rec, cars, starts, view, all_costs=False)
    times = {"grouped_render_views": 0.0, "one_render_pairs": 0.0}
    for _ in range(steps):
        t0 = time.process_time()
        new, _ = batch.observe()
        times["one_render_pairs"] += time.process_time() - t0
        t0 = time.process_time()
        old = np.zeros_like(new)
        t_clip = np.minimum(batch.ego.time, rec.steps - 1)
        for t in np.unique(t_clip):
            which = np.flatnonzero(t_clip == t)
            others = np.flatnonzero(rec.valid[t])
            index = {int(c): i for i, c in enumerate(others)}
            own = np.array([index.get(int(batch.ego_ids[w]), -1) for w in which])
            old[which] = render_views(batch.ego.pos[which], batch.ego.heading[which],
                                      batch.ego.size[which], rec.pos[t, others],
                                      rec.heading[t, others], rec.size[others], own, rec.road,
                                      view)
        times["grouped_render_views"] += time.process_time() - t0
        assert np.array_equal(old, new), "the two renderings differ"
        batch.step(rec.action[np.minimum(batch.ego.time, rec.steps - 1), cars])
    n = len(cars) * steps
    return {"ego_steps": n, **{f"{k}_ms_per_view": 1e3 * v / n for k, v in times.items()},
            "speedup": times["grouped_render_views"] / times["one_render_pairs"],
            "identical_images": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mpc-cache", action="store_true",
                        help="measure the gradient-MPC scene cache instead")
    parser.add_argument("--model", type=Path, default=None,
                        help="a trained ego-motion model checkpoint for --mpc-cache")
    parser.add_argument("--replay-render", action="store_true",
                        help="measure the evaluation's batched rendering instead")
    args = parser.parse_args()
    if args.replay_render:
        res = replay_rendering(steps=10 if args.quick else 40)
        for k, v in res.items():
            print(f"{k:34s} {v}")
        return
    if args.mpc_cache:
        import torch

        torch.set_num_threads(1)
        res = mpc_cache(args.model, calls=2 if args.quick else 6)
        for k, v in res.items():
            print(f"{k:34s} {v}")
        out = args.out or Path("benchmarks/results/highway_mpc_cache.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        from worldplan.checkpoint import atomic_write_text

        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
        return
    args.out = args.out or Path("benchmarks/results/highway.json")
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
    from worldplan.checkpoint import atomic_write_text

    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
