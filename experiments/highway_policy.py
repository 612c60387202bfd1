"""The highway's ``train-policy`` stage: imitation, then the oracle, VG, SVG, MPUR and MPER
learners by backprop through time (through the frozen world models, the plan-aware
head of experiments/highway_plan.py, or the true replayed future).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from worldplan.checkpoint import load_checkpoint, save_checkpoint
from worldplan.envs.highway.render import View
from worldplan.errors import UserError
from worldplan.experiments.common import resolve_device, seed_everything
from worldplan.experiments.highway_config import (
    DATASET_TASK,
    METHOD_MODEL,
    POLICY_METHODS,
    HighwayConfig,
    PolicyConfig,
    check_methods,
)
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
from worldplan.experiments.highway_shared import (
    LastContext,
    check_policy_file,
    cost_fn,
    latent_fn,
    load_highway_policy,
    load_world_model,
    model_path,
    new_policy,
    open_dataset,
    oracle_fn,
    policy_meta,
    policy_path,
    posterior_fn,
    recorded_ids,
    sampler,
    set_threads,
    uncertainty_fn,
)
from worldplan.experiments.runs import Run
from worldplan.planners.policy.checkpoint import save_policy
from worldplan.planners.policy.imitation import ImitationConfig as ImCfg
from worldplan.planners.policy.imitation import train_imitation
from worldplan.planners.policy.mper import MPERConfig, train_mper
from worldplan.planners.policy.mpur import (
    MPURConfig,
    expert_uncertainty_stats,
    policy_rollout,
    train_mpur,
)
from worldplan.worldmodels.plan_uncertainty import PlanHeadEnsemble, train_plan_head
from worldplan.worldmodels.uncertainty import auroc

log = logging.getLogger(__name__)


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
        if start != "imitation" and not policy_path(run, start, seed).is_file():
            raise UserError(f"policy.init_from {start!r}: no such policy of seed {seed} "
                            f"in {run.checkpoints}")
        if policy_path(run, start, seed).is_file():
            check_policy_file(config, run, start, seed, ds, ncond)


def train_policy_stage(config: HighwayConfig, run: Run) -> None:
    """Train every method in ``policy.methods`` and save ``checkpoints/policy-<m>.pt``."""
    set_threads(config)

    p = config.policy
    check_methods(tuple(p.methods), POLICY_METHODS, "policy.methods")
    ds = open_dataset(run)
    device = resolve_device(config.device)
    needs = {METHOD_MODEL[m] for m in p.methods} - {None}
    if p.world == "plan-head" and {"vg", "svg", "mpur"} & set(p.methods):
        needs.add("stochastic")  # the trunk whose scene the head corrects
    models = {w: load_world_model(run, w, ds, device) for w in sorted(needs)}  # fail early
    model_ncond = next(iter(models.values())).ncond if models else config.model.ncond
    ncond = p.ncond or model_ncond
    if ncond < model_ncond:
        raise UserError(f"policy.ncond {ncond} is shorter than the world model's context "
                        f"{model_ncond}")
    _check_start_policies(config, run, ds, ncond)
    view = View(**ds.manifest["generator"]["config"]["view"])
    cost = cost_fn(view, p.lane_weight, p.proximity)
    rng = seed_everything(config.seed)
    # policies learn from the recorded drivers' contexts (the drives only teach the model)
    windows = ds.windows("train", ncond, max(p.horizon, 1),
                         episodes=recorded_ids(ds, "train"))
    sample = sampler(windows, device)
    oracle_sample = None
    if "oracle" in p.methods:
        oracle_sample = sampler(ds.windows("train", ncond, p.oracle_horizon + p.oracle_burn_in,
                                           episodes=recorded_ids(ds, "train")), device)
    summary: dict[str, dict] = {}
    u_stats = None
    plan = None
    plan_sample = sample
    if p.world == "plan-head" and {"vg", "svg", "mpur"} & set(p.methods):
        # the scene covers the burn-in and the gradient steps, and the hinge is fitted
        # per step of it
        if p.burn_in:
            plan_sample = sampler(ds.windows("train", ncond, max(p.horizon, 1) + p.burn_in,
                                             episodes=recorded_ids(ds, "train")), device)
        plan = _plan_head(config, run, ds, models["stochastic"], view, plan_sample, rng, ncond)
        summary["plan_head"] = plan["metrics"]
        u_stats = plan["hinge"]
    elif "mpur" in p.methods:
        sto = models["stochastic"]
        u_stats = expert_uncertainty_stats(uncertainty_fn(sto, p.mc_samples, view), sample,
                                           latent_fn(sto), rng, batches=4,
                                           batch_size=p.batch_size)
        summary["expert_uncertainty"] = u_stats.to_dict()
    if not p.seeds or len(set(p.seeds)) != len(p.seeds):
        raise UserError(f"policy.seeds must be distinct and non-empty, got {p.seeds}")
    # imitation first: the model-based learners start from it
    ordered = sorted(p.methods, key=lambda m: m != "imitation")
    for seed, method in [(s, m) for s in p.seeds for m in ordered]:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        policy = new_policy(config, ds, ncond).to(device)
        t0 = time.perf_counter()
        if method == "imitation":
            hist = {"loss": train_imitation(policy, sample, ImCfg(steps=p.imitation_steps,
                                                                  batch_size=4 * p.batch_size,
                                                                  lr=1e-3), rng, run.writer())}
        else:
            start = p.init_from or "imitation"
            if policy_path(run, start, seed).is_file():
                # start every model-based learner from the imitation policy of its seed
                # (as PPUU's MPER/MPUR runs start from a sensible driver), or from the
                # policy named by policy.init_from (to continue a learner's training)
                policy.load_state_dict(
                    load_highway_policy(config, run, start, seed, ds, device, ncond).state_dict())
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
                                  model_fn=oracle_fn(view, ds.dt))
            elif method == "mper":
                hist = {"loss": train_mper(policy, model, sample, posterior_fn(model),
                                           model.delta_std,
                                           MPERConfig(steps=p.bptt_steps, batch_size=p.batch_size,
                                                      horizon=p.horizon, lr=p.lr),
                                           rng, run.writer())}
            elif plan is not None:

                lam = p.lam if method == "mpur" else 0.0
                latent = "zero" if method == "vg" else "prior"
                model_fn, u_fn = plan_world_fn(plan["trunk"], plan["head"], view, latent,
                                               "with-grad" if lam > 0 else "never",
                                               every=p.u_every, source=p.u_source,
                                               samples=p.scene_samples)
                pool = scene_pool(plan["trunk"], plan_sample, rng, p.scene_windows, latent,
                                  samples=p.scene_samples
                                  if lam > 0 and p.u_source == "scene" else 0,
                                  envelope=p.scene_samples if p.scene_cars == "envelope"
                                  else 0)
                hist = train_mpur(policy, None, pool, cost,
                                  MPURConfig(steps=p.bptt_steps, batch_size=p.batch_size,
                                             horizon=p.horizon, lr=p.lr, lam=lam,
                                             detach_frames=p.detach_frames,
                                             burn_in=p.burn_in),
                                  rng, lambda b, t: None, u_fn if lam > 0 else None,
                                  LastSteps(u_stats, p.horizon, p.u_every) if lam > 0 else None,
                                  run.writer(), tag=method, model_fn=model_fn)
            else:
                lam = p.lam if method == "mpur" else 0.0
                hist = train_mpur(policy, model, sample, cost,
                                  MPURConfig(steps=p.bptt_steps, batch_size=p.batch_size,
                                             horizon=p.horizon, lr=p.lr, lam=lam,
                                             detach_frames=p.detach_frames,
                                             burn_in=p.burn_in),
                                  rng, latent_fn(model),
                                  uncertainty_fn(model, p.mc_samples, view) if lam > 0 else None,
                                  u_stats if lam > 0 else None, run.writer(), tag=method)
        save_policy(policy_path(run, method, seed), policy, DATASET_TASK,
                    policy_meta(config, method, seed))
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
    cached in ``checkpoints/plan-head.pt``; none when U comes from the trunk's own
    sampled scenes), PPUU's hinge fitted on expert windows, and the AUROC of U between
    recorded and unusual actions on validation windows."""

    p = config.policy
    torch.manual_seed(config.seed)
    hrng = np.random.default_rng(config.seed + 7)
    head, metrics = None, {}
    if p.u_source != "scene":  # with "scene" the frame is the trunk's and U its samples'
        head, metrics = _head_ensemble(config, run, ds, trunk, hrng)
    hinge = fit_hinge(trunk, head, view, sample, hrng, source=p.u_source,
                      samples=p.scene_samples)
    metrics = {**metrics, "u_source": p.u_source,
               **_u_auroc(trunk, head, view, ds, p, ncond, hrng, hinge)}
    log.info("plan-aware world: %s", metrics)
    return {"trunk": trunk, "head": head, "hinge": hinge, "metrics": metrics}


def _head_ensemble(config: HighwayConfig, run: Run, ds, trunk, hrng: np.random.Generator
                   ) -> tuple[PlanHeadEnsemble, dict]:
    """The frozen head ensemble of this run's trunk and its training metrics: loaded from
    ``checkpoints/plan-head.pt`` when its spec matches, else trained and saved there."""
    p = config.policy
    path = run.checkpoints / "plan-head.pt"
    spec = {"members": p.head_members, "width": p.head_width, "steps": p.head_steps,
            "windows": p.head_windows, "horizon": p.head_horizon,
            "trunk_mtime": model_path(run, "stochastic").stat().st_mtime}
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
    return head, metrics


def _u_auroc(trunk, head: PlanHeadEnsemble | None, view: View, ds, p: PolicyConfig, ncond: int,
             rng: np.random.Generator, hinge) -> dict:
    """The AUROC of U (``hinge`` summed over the rollout) between the recorded actions and
    unusual ones on 128 validation windows, and the mean U of each."""
    val = sampler(ds.windows("val", ncond, max(p.horizon, 1),
                             episodes=recorded_ids(ds, "val")), torch.device("cpu"))
    u_in, u_out = [], []
    for _ in range(4):
        b = val(rng, 32)
        for rows, acts in ((u_in, b["actions"]), (u_out, unusual_actions(b["actions"], rng))):
            rows.append(hinge.hinge(variances_under(trunk, head, view, b, acts,
                                                    source=p.u_source,
                                                    samples=p.scene_samples)).sum(1))
    ui, uo = torch.cat(u_in), torch.cat(u_out)
    return {"auroc_unusual_vs_recorded": auroc(ui, uo), "u_recorded": float(ui.mean()),
            "u_unusual": float(uo.mean())}


@torch.no_grad()
def _policy_plan_u(policy, plan: dict, view: View, p: PolicyConfig, ds, ncond: int,
                   device) -> float:
    """Mean plan-aware U (hinge, summed over the steps) of ``policy`` on its own
    imagined rollouts from 64 validation windows."""

    val = sampler(ds.windows("val", ncond, max(p.horizon, 1),
                             episodes=recorded_ids(ds, "val")), device)
    rng = np.random.default_rng(123)
    us = []
    for _ in range(4):
        b = val(rng, 16)
        model_fn, u_fn = plan_world_fn(plan["trunk"], plan["head"], view,
                                       source=p.u_source, samples=p.scene_samples)
        world = model_fn(b)
        policy_rollout(policy, world, b["context"], b["context_images"], p.horizon)
        us.append(plan["hinge"].hinge(world.variances()).sum(1))
    return float(torch.cat(us).mean())
