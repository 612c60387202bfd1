"""How well the plan-aware world's scene predicts the policy cost, against the true
replayed future: the calibration behind ``policy.scene_cars`` (docs/highway.md).

On validation windows of a highway run, the ego drives the recorded actions, or those
plus a constant extra acceleration, through four worlds: the true replayed future (the
oracle), the trunk's scene with one prior latent (``one``), the mean of the costs of
``--samples`` sampled scenes, and their envelope (the pixelwise max of the scene and
the samples, ``envelope``). Per world it prints the summed 3-s front-rear proximity cost
as a fraction of the true one, the correlation of the sums with the truth, and the AUROC
with which its worst step picks the windows whose true worst step exceeds 1.5 (a car
inside the ego's safety zone). Writes ``benchmarks/results/highway_scene_cost.json``.

    python benchmarks/highway_scene_cost.py runs/hw
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from worldplan.checkpoint import CheckpointError, atomic_write_text
from worldplan.envs.highway.kinematics import MAX_ACCEL
from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.envs.highway.render import View
from worldplan.errors import UserError
from worldplan.experiments.highway_plan import scene_oracle, scene_rollout, scene_samples
from worldplan.experiments.highway_shared import (
    cost_fn,
    load_world_model,
    open_dataset,
    recorded_ids,
    sampler,
)
from worldplan.experiments.runs import Run
from worldplan.worldmodels.uncertainty import auroc

WORLDS = ("true", "one", "mean of samples", "envelope")
CLOSE = 1.5  # a true worst-step cost above this: a car inside the ego's safety zone


def _costs(world: ReplayOracle, context: torch.Tensor, actions: torch.Tensor, cost) -> torch.Tensor:
    """Per-step cost ``[B, T]`` of driving ``actions`` ``[B, T, 2]`` through ``world``."""
    out = []
    for t in range(actions.shape[1]):
        state, frame = world.step(context, actions[:, t])
        context = torch.cat([context[:, 1:], state[:, None]], 1)
        out.append(cost(frame, state))
    return torch.stack(out, 1)


@torch.no_grad()
def window_costs(trunk, batch: dict[str, torch.Tensor], actions: torch.Tensor, cost, view: View,
                 dt: float, samples: int) -> dict[str, torch.Tensor]:
    """``{world: [B, T] costs}`` for one batch of windows under ``actions``."""
    ctx, frames, recorded = batch["context"], batch["context_images"], batch["actions"]
    c = trunk.cars_channel

    states, scene = scene_rollout(trunk, ctx, frames, recorded)
    cars = scene_samples(trunk, ctx, frames, recorded, samples)  # [B, K, T, 1, H, W]
    per_sample = []
    for k in range(samples):
        sampled = scene.clone()
        sampled[:, :, c:c + 1] = cars[:, k]
        per_sample.append(_costs(scene_oracle(trunk, sampled, states), ctx, actions, cost))
    envelope = scene.clone()
    envelope[:, :, c:c + 1] = torch.maximum(scene[:, :, c:c + 1], cars.amax(1))
    return {"true": _costs(ReplayOracle(batch["target_images"], batch["targets"], view.res, dt),
                           ctx, actions, cost),
            "one": _costs(scene_oracle(trunk, scene, states), ctx, actions, cost),
            "mean of samples": torch.stack(per_sample).mean(0),
            "envelope": _costs(scene_oracle(trunk, envelope, states), ctx, actions, cost)}


def summary(costs: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per world: summed cost over the truth's, correlation of the sums, AUROC of close."""
    true = costs["true"]
    close = true.amax(1) > CLOSE
    out = {}
    for name, c in costs.items():
        row = {"cost_ratio": float(c.sum(1).mean() / true.sum(1).mean()),
               "corr": float(np.corrcoef(c.sum(1).numpy(), true.sum(1).numpy())[0, 1]),
               "auroc_close": float("nan")}
        if close.any() and (~close).any():
            row["auroc_close"] = auroc(c.amax(1)[~close], c.amax(1)[close])
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a highway run with data and world models")
    parser.add_argument("--batches", type=int, default=6, help="batches of 32 windows")
    parser.add_argument("--samples", type=int, default=4, help="sampled scenes")
    parser.add_argument("--extra-accel", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                        help="m/s^2 added to the recorded acceleration")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/highway_scene_cost.json"))
    args = parser.parse_args()
    if args.batches < 1 or args.samples < 2:
        parser.error("--batches must be >= 1 and --samples >= 2")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    try:
        run = Run.open(args.run, "highway")
        ds = open_dataset(run)
        trunk = load_world_model(run, "stochastic", ds, torch.device("cpu"))
    except (UserError, CheckpointError) as err:
        parser.error(str(err))
    view = View(**ds.manifest["generator"]["config"]["view"])
    cost = cost_fn(view, 0.2, "front-rear")
    horizon = 30
    val = sampler(ds.windows("val", 10, horizon, episodes=recorded_ids(ds, "val")),
                  torch.device("cpu"))
    rng = np.random.default_rng(args.seed)
    results = {}
    for extra in args.extra_accel:
        rows: dict[str, list[torch.Tensor]] = {w: [] for w in WORLDS}
        for _ in range(args.batches):
            b = val(rng, 32)
            actions = b["actions"].clone()
            actions[..., 0] = (actions[..., 0] + extra).clamp(-MAX_ACCEL, MAX_ACCEL)
            for name, c in window_costs(trunk, b, actions, cost, view, ds.dt,
                                        args.samples).items():
                rows[name].append(c)
        costs = {name: torch.cat(v) for name, v in rows.items()}
        table = summary(costs)
        close = float((costs["true"].amax(1) > CLOSE).float().mean())
        results[f"extra_accel_{extra:g}"] = {"windows": len(costs["true"]),
                                             "close_fraction": close, "worlds": table}
        print(f"\nrecorded acceleration + {extra:g} m/s^2: {len(costs['true'])} windows, "
              f"{close:.0%} come close")
        print(f"{'world':16s} {'cost / true':>11s} {'corr':>6s} {'AUROC close':>12s}")
        for name, row in table.items():
            print(f"{name:16s} {row['cost_ratio']:11.3f} {row['corr']:6.3f} "
                  f"{row['auroc_close']:12.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"run": str(args.run), "samples": args.samples,
                                            "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
