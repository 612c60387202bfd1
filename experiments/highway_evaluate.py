"""The highway's ``evaluate`` stage: every method on the held-out cars of every held-out
set (the episode harness is experiments/highway_eval.py, gradient MPC
experiments/highway_mpc.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from worldplan.checkpoint import atomic_write_text
from worldplan.envs.highway import Recording
from worldplan.envs.highway.costs import masks_torch
from worldplan.envs.highway.render import View
from worldplan.errors import UserError
from worldplan.experiments import highway_eval as he
from worldplan.experiments.common import resolve_device, save_figure, seed_everything
from worldplan.experiments.highway_config import (
    METHODS,
    POLICY_METHODS,
    PRIVILEGED,
    EvalConfig,
    HighwayConfig,
    check_methods,
    policy_ncond,
)
from worldplan.experiments.highway_eval import HeldOut, eval_recording
from worldplan.experiments.highway_figures import evaluation_figure
from worldplan.experiments.highway_mpc import SceneCacheMPC
from worldplan.experiments.highway_shared import (
    cost_fn,
    load_highway_policy,
    load_world_model,
    local_uncertainty,
    model_path,
    open_dataset,
    policy_path,
    recorded_ids,
    set_threads,
)
from worldplan.experiments.runs import Run
from worldplan.worldmodels.uncertainty import mc_uncertainty

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- evaluate
def _held_out_sets(config: HighwayConfig, run: Run, ds, rec: Recording):
    """The test split of the training recording (``evaluate.test_split``) and one set per
    ``evaluate.eval_seeds`` recording (cached in the run's data folder); at most
    ``config.episodes`` cars per set when it is > 0."""

    ev = config.evaluate
    used = {config.seed}
    bad = [s for s in ev.eval_seeds if s in used]
    if bad or len(set(ev.eval_seeds)) != len(ev.eval_seeds):
        raise UserError(f"evaluate.eval_seeds must be distinct and differ from the training "
                        f"seed {config.seed}, got {list(ev.eval_seeds)}")
    sets = []
    if ev.test_split:
        meta = ds.manifest["generator"]["config"]
        ids = recorded_ids(ds, "test")
        if not ids:
            raise UserError(f"data set {ds.path} has no test episodes")
        sets.append(HeldOut("test", rec, np.array([meta["car_ids"][i] for i in ids]),
                            np.array([meta["start_steps"][i] for i in ids])))
    for seed in ev.eval_seeds:
        sets.append(eval_recording(seed, ev.eval_record_seconds, ev.eval_warmup_seconds,
                                   ev.eval_cars, run.data))
    if not sets:
        raise UserError("no held-out cars: set evaluate.test_split or evaluate.eval_seeds")
    if config.episodes > 0:
        sets = [HeldOut(h.name, h.rec, h.cars[:config.episodes], h.starts[:config.episodes])
                for h in sets]
    return sets


def one_step_frame(model, states: torch.Tensor, frames: torch.Tensor, actions: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """The model's next frame ``[B, C, H, W]`` (z = 0) from the last ``model.ncond`` of the
    context ``states`` ``[B, K, 4]`` and ``frames`` ``[B, K, C, H, W]`` under ``actions``
    ``[B, 2]``: what the evaluation compares with the frame that came."""
    k = model.ncond
    ms = model.reset(states[:, -k:].to(device), frames[:, -k:].to(device))
    return model.advance(ms, actions.to(device),
                         torch.zeros(len(states), model.z_dim, device=device)).image


def evaluate_stage(config: HighwayConfig, run: Run) -> None:
    """Every method of ``evaluate.methods`` on the held-out cars of every held-out set
    (experiments/highway_eval.py); metrics.json, a markdown table, a video."""

    set_threads(config)
    ev = config.evaluate
    check_methods(tuple(ev.methods), METHODS, "evaluate.methods")
    if ev.ncond < 1 or ev.max_steps < 1:
        raise UserError(f"evaluate.ncond and evaluate.max_steps must be >= 1, got "
                        f"{ev.ncond}, {ev.max_steps}")
    ds = open_dataset(run)
    device = resolve_device(config.device)
    # load everything first so that a missing checkpoint fails before any episode runs
    seeds = tuple(config.policy.seeds)
    policies = {(m, s): load_highway_policy(config, run, m, s, ds, device, policy_ncond(config))
                for m in ev.methods if m in POLICY_METHODS for s in seeds}
    need_model = "mpc" in ev.methods or (ev.uncertainty and model_path(
        run, "stochastic").is_file())
    sto = load_world_model(run, "stochastic", ds, device) if need_model else None
    rec = Recording.load(run.data / ds.manifest["generator"]["config"]["recording"])
    view = View(**ds.manifest["generator"]["config"]["view"])
    sets = _held_out_sets(config, run, ds, rec)
    seed_everything(config.seed)

    u_fn = predict = None
    if sto is not None and ev.uncertainty:

        k = sto.ncond

        def u_fn(states, frames, actions):
            z = torch.zeros(len(states), 1, sto.z_dim)
            start = sto.reset(states[:, -k:].to(device), frames[:, -k:].to(device))
            mc = mc_uncertainty(sto, start, actions[:, None].to(device),
                                n=max(ev.mc_samples, 2), z=z.to(device))
            return local_uncertainty(mc, sto, view)[:, 0]

        def predict(states, frames, actions):
            return one_step_frame(sto, states, frames, actions, device)

    common = {"sets": [(h.name, len(h.cars)) for h in sets], "ncond": ev.ncond,
              "max_steps": ev.max_steps, "u": bool(u_fn), "mc": ev.mc_samples,
              "u_every": ev.uncertainty_every,
              "model": he.file_stamp(model_path(run, "stochastic")) if sto else None}
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
            stamp = (he.file_stamp(policy_path(run, method, seed)) if seed is not None
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
    atomic_write_text(run.path / "evaluation.md", table + "\n")
    with run.optional_artefact("the evaluation figure"):
        save_figure(evaluation_figure(results, f"{sum(len(h.cars) for h in sets)} held-out "
                                      "cars"), run.figures / "evaluation.png")
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


def u_map(view: View):
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
    return SceneCacheMPC(model, cost_fn(view, lane_weight), u_map(view), low, high,
                         ev.mpc_horizon, ev.mpc_iterations, ev.mpc_lr, ev.mpc_u_weight,
                         max(ev.mc_samples, 2), cache=ev.mpc_cache)
