"""The highway evaluation: held-out cars from fresh traffic recordings, every method
driven among the recorded (non-reactive) traffic, and tables that can tell methods apart.

Held-out sets: the test split of the training recording plus ``evaluate.eval_seeds``
recordings simulated with seeds never used for training (each car that crosses the
whole road is one episode). Every ego replays its own first ``ncond`` recorded steps,
then the method drives. One pass per method gives PPUU's outcome (the first event) and
the outcome when hits from behind are forgiven (``ReplayBatch(ignore_rear=True)``).

A row (:func:`summarise`) holds the success rate with its Wilson 95 % interval, the
success rate ignoring rear hits (with its interval), the mean distance to the first
event, collisions split front / rear / side, off-road, timeouts, the mean uncertainty
and the success rate per held-out set; :func:`over_seeds` adds mean / std / best over
policy seeds and the interval of all seeds' episodes pooled. Per-episode results are
cached by method, checkpoint and evaluation settings (``eval-cache/`` in the run), so a
repeated evaluation only drives what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from worldplan.checkpoint import atomic_write_text
from worldplan.envs.highway import Recording, record_traffic
from worldplan.envs.highway.costs import CostConfig
from worldplan.envs.highway.render import View
from worldplan.envs.highway.replay import COLLISION, HITS, OFFROAD, SUCCESS, TIMEOUT, ReplayBatch
from worldplan.envs.highway.traffic import TrafficConfig
from worldplan.errors import UserError
from worldplan.experiments.video import write_video as shared_write_video
from worldplan.planners.control_loop import Transition, run_episodes

log = logging.getLogger(__name__)

# act(batch, states [E, K, 4], frames [E, K, C, H, W] uint8) -> actions [E, 2]
Act = Callable[[ReplayBatch, torch.Tensor, torch.Tensor], np.ndarray]


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95 % for z = 1.96)."""
    if n <= 0:
        raise ValueError(f"wilson: n must be > 0, got {n}")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(mid - half, 0.0)), float(min(mid + half, 1.0))


@dataclass
class HeldOut:
    """Episodes of one recording: cars ``[E]`` starting at steps ``starts`` ``[E]``."""

    name: str
    rec: Recording
    cars: np.ndarray
    starts: np.ndarray


def eval_recording(seed: int, seconds: float, warmup: float, max_cars: int,
                   cache: Path) -> HeldOut:
    """A fresh recording (cached in ``cache`` by seed and durations) and its cars that
    cross the whole road (at most ``max_cars``); none is an error."""
    path = Path(cache) / f"eval-recording-seed{seed}-{seconds:g}s-warm{warmup:g}s.npz"
    if path.is_file():
        rec = Recording.load(path)
    else:
        cfg = TrafficConfig()
        rec = record_traffic(int(round(seconds / cfg.dt)), cfg,
                             warmup=int(round(warmup / cfg.dt)), seed=seed, progress=False)
        rec.save(path)
    cars = rec.complete_cars()[:max_cars]
    if len(cars) == 0:
        raise UserError(f"evaluation recording seed {seed} ({rec.steps * rec.dt:.0f} s) holds "
                        "no held-out car: none crosses the whole road; record longer")
    starts = np.array([rec.span(int(c))[0] for c in cars])
    return HeldOut(f"seed{seed}", rec, cars, starts)


class Context(NamedTuple):
    """What a method sees: the newest ``K`` states ``[E, K, 4]`` float32 and frames
    ``[E, K, C, H, W]`` uint8 of every episode."""

    states: torch.Tensor
    frames: torch.Tensor


def drive(held: HeldOut, act: Act, ncond: int, context: int, view: View, max_steps: int,
          uncertainty: Callable | None = None, u_every: int = 10, record: int = -1,
          predict: Callable | None = None) -> dict[str, np.ndarray | list]:
    """Drive every car of ``held`` at once (see the module doc); per-episode results.

    The episodes run on :func:`worldplan.planners.control_loop.run_episodes`: the reset
    replays each car's first ``max(ncond, context)`` recorded steps (a car whose replay
    already ended is never driven), the controller is ``act`` on the newest ``context``
    states and frames, and an episode ends when its outcome with rear hits forgiven is
    decided. ``uncertainty(states, frames, actions) -> [E]`` is averaged every ``u_every``
    steps while PPUU's episode runs; ``record`` >= 0 keeps that episode's frames (beside
    ``predict(states, frames, actions) -> frames``) for a video.
    """
    warm = max(ncond, context)
    rec, cars = held.rec, held.cars
    batch = ReplayBatch(rec, cars, held.starts, view, CostConfig(), max_steps + warm,
                        ignore_rear=True, all_costs=False)
    u_sum, u_n = np.zeros(batch.size), np.zeros(batch.size)
    video: list[tuple[np.ndarray, torch.Tensor | None]] = []
    # the context the controller saw last and the loop's step count, kept between calls
    now: dict[str, Any] = {"step": 0}

    def reset() -> Transition:
        imgs, states = batch.observe()
        frames, sts = [np.moveaxis(imgs, -1, 1)], [states]
        for _ in range(warm - 1):
            imgs, states, _ = batch.step(rec.action[np.minimum(batch.ego.time, rec.steps - 1),
                                                    cars])
            frames.append(np.moveaxis(imgs, -1, 1))
            sts.append(states)
        now.update(replay_failed=batch.outcome != 0, start_x=batch.ego.pos[:, 0].copy(),
                   ctx=Context(torch.as_tensor(np.stack(sts[-context:], 1),
                                               dtype=torch.float32),
                               torch.as_tensor(np.stack(frames[-context:], 1))))
        return Transition(now["ctx"], terminated=batch.done)

    def controller(ctx: Context) -> np.ndarray:
        return np.asarray(act(batch, ctx.states, ctx.frames), np.float64)

    def step(action: np.ndarray, alive: np.ndarray) -> Transition:
        st, fr = now["ctx"]
        # PPUU's episode (the first event) may end before the loop's (rear hits forgiven)
        first_running = batch.outcome == 0
        if uncertainty is not None and now["step"] % u_every == 0 and first_running.any():
            with torch.no_grad():
                u = uncertainty(st, fr, torch.as_tensor(action, dtype=torch.float32))
            u_sum[first_running] += u.cpu().numpy()[first_running]
            u_n[first_running] += 1
        pred = None
        if record >= 0 and first_running[record] and predict is not None:
            with torch.no_grad():
                pred = predict(st[record:record + 1], fr[record:record + 1],
                               torch.as_tensor(action[record:record + 1], dtype=torch.float32))
        imgs, states, _ = batch.step(action)
        if record >= 0 and first_running[record]:
            video.append((imgs[record], pred))
        fr = torch.cat([fr[:, 1:], torch.as_tensor(np.moveaxis(imgs, -1, 1))[:, None]], 1)
        st = torch.cat([st[:, 1:], torch.as_tensor(states, dtype=torch.float32)[:, None]], 1)
        now["ctx"], now["step"] = Context(st, fr), now["step"] + 1
        return Transition(now["ctx"], terminated=batch.done)

    run_episodes(reset, step, controller, batch.size, max_steps)
    outcome = np.where(batch.outcome == 0, TIMEOUT, batch.outcome)
    no_rear = np.where(batch.outcome_no_rear == 0, TIMEOUT, batch.outcome_no_rear)
    distance = np.where(np.isnan(batch.event_distance), batch.distance(), batch.event_distance)
    distance = distance - (now["start_x"] - batch.start_x)  # from the take-over
    return {"outcome": outcome.tolist(), "outcome_no_rear": no_rear.tolist(),
            "hit": batch.hit.tolist(), "distance": distance.tolist(),
            "uncertainty": np.where(u_n > 0, u_sum / np.maximum(u_n, 1), np.nan).tolist(),
            "replay_failed": now["replay_failed"].tolist(), "set": [held.name] * batch.size,
            "video": video}


def concat(outs: list[dict]) -> dict[str, list]:
    """Per-episode results of several held-out sets as one."""
    keys = [k for k in outs[0] if k != "video"]
    return {k: [v for o in outs for v in o[k]] for k in keys}


def summarise(ep: dict[str, list]) -> dict:
    """One table row from per-episode results (see the module doc)."""
    outcome, no_rear = np.asarray(ep["outcome"]), np.asarray(ep["outcome_no_rear"])
    hit = np.asarray(ep["hit"])
    n = len(outcome)
    succ = int((outcome == SUCCESS).sum())
    succ_nr = int((no_rear == SUCCESS).sum())
    u = np.asarray(ep["uncertainty"], float)
    coll = outcome == COLLISION
    sets = np.asarray(ep["set"])
    return {
        "episodes": n, "success_rate": succ / n, "success_ci95": wilson(succ, n),
        "success_no_rear": succ_nr / n, "success_no_rear_ci95": wilson(succ_nr, n),
        "mean_distance_m": float(np.mean(ep["distance"])),
        "collision_rate": float(coll.mean()),
        **{f"collision_{HITS[k]}": float((coll & (hit == k)).mean()) for k in (1, 2, 3)},
        "offroad_rate": float((outcome == OFFROAD).mean()),
        "timeout_rate": float((outcome == TIMEOUT).mean()),
        "mean_uncertainty": float(np.nanmean(u)) if np.isfinite(u).any() else None,
        "success_by_set": {s: float((outcome[sets == s] == SUCCESS).mean())
                           for s in dict.fromkeys(sets.tolist())},
    }


def over_seeds(per_seed: dict[str, dict], episodes: dict[str, dict[str, list]]) -> dict:
    """Mean of every figure over policy seeds, the std / best / worst of the success
    rate, and the Wilson interval of all seeds' episodes pooled."""
    rows = list(per_seed.values())
    out: dict = {}
    for key, val in rows[0].items():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            vals = [r[key] for r in rows if r[key] is not None]
            out[key] = float(np.mean(vals)) if vals else None
        elif val is None:
            vals = [r[key] for r in rows if r[key] is not None]
            out[key] = float(np.mean(vals)) if vals else None
    rates = [r["success_rate"] for r in rows]
    out["success_by_set"] = {k: float(np.mean([r["success_by_set"][k] for r in rows]))
                             for k in rows[0]["success_by_set"]}
    pooled = summarise(concat(list(episodes.values())))
    out.update(success_rate_std=float(np.std(rates)), success_rate_best=float(np.max(rates)),
               success_rate_worst=float(np.min(rates)),
               best_seed=int(list(per_seed)[int(np.argmax(rates))]),
               success_ci95=pooled["success_ci95"],
               success_no_rear_ci95=pooled["success_no_rear_ci95"],
               episodes=rows[0]["episodes"], seeds=len(rows), per_seed=per_seed)
    return out


def format_table(results: dict[str, dict]) -> str:
    """A markdown table of evaluation rows (single rows or over seeds)."""
    head = ("| method | success (95% CI) | seeds: mean +- std (best) | no rear hits (95% CI) "
            "| distance m | front / rear / side | off-road | mean U |")
    lines = [head, "|" + "---|" * 8]
    for m, r in results.items():
        lo, hi = r["success_ci95"]
        seeds = "-"
        if "success_rate_std" in r:
            seeds = (f"{100 * r['success_rate']:.1f} +- {100 * r['success_rate_std']:.1f} "
                     f"({100 * r['success_rate_best']:.1f})")
        lo2, hi2 = r["success_no_rear_ci95"]
        u = r.get("mean_uncertainty")
        lines.append(
            f"| {m} | {100 * r['success_rate']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) | {seeds} "
            f"| {100 * r['success_no_rear']:.1f}% ({100 * lo2:.1f}-{100 * hi2:.1f}) "
            f"| {r['mean_distance_m']:.1f} | {100 * r['collision_front']:.0f} / "
            f"{100 * r['collision_rear']:.0f} / {100 * r['collision_side']:.0f}% "
            f"| {100 * r['offroad_rate']:.0f}% | {'-' if u is None else f'{u:.3g}'} |")
    return "\n".join(lines)


def cache_key(**parts) -> str:
    """A short digest of everything an evaluation result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_stamp(path: Path) -> str:
    """Size and modification time of a checkpoint (changes whenever it is rewritten)."""
    s = Path(path).stat()
    return f"{s.st_size}-{s.st_mtime_ns}"


def cached(folder: Path, name: str, key: str, compute: Callable[[], dict]) -> dict:
    """Per-episode results from ``folder/name.json`` when its key matches, else computed
    and stored (atomically)."""

    path = Path(folder) / f"{name}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return data["episodes"]
        except ValueError:
            pass
    episodes = compute()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "episodes": episodes}))
    return episodes


def expert_act(batch: ReplayBatch, st: torch.Tensor, fr: torch.Tensor) -> np.ndarray:
    """The recorded driver (expert replay)."""
    return batch.rec.action[np.minimum(batch.ego.time, batch.rec.steps - 1), batch.ego_ids]


def no_action(batch: ReplayBatch, st: torch.Tensor, fr: torch.Tensor) -> np.ndarray:
    return np.zeros((batch.size, 2))


def privileged_act(driver) -> Act:
    """A privileged driver (``worldplan.envs.highway.privileged``) as an :data:`Act`; its lateral
    reference is computed once per batch."""
    held: dict[str, object] = {}  # the batch (kept alive, so ``is`` is reliable) and refs

    def act(batch: ReplayBatch, st: torch.Tensor, fr: torch.Tensor) -> np.ndarray:
        if held.get("batch") is not batch:
            held.update(batch=batch, refs=driver.reference(batch))
        return driver.act(batch, held["refs"])

    return act


def policy_act(policy, device: torch.device) -> Act:
    def act(batch: ReplayBatch, st: torch.Tensor, fr: torch.Tensor) -> np.ndarray:
        k = policy.cfg["ncond"]
        with torch.no_grad():
            a = policy(st[:, -k:].to(device), fr[:, -k:].to(device))
        return a.cpu().numpy().astype(np.float64)

    return act




def video_frame(obs: np.ndarray, pred: torch.Tensor | None, scale: int = 4) -> np.ndarray:
    """Observation ``[H, W, C]`` (and the model's prediction of it) side by side, BGR."""
    import cv2

    panels = [obs[..., :3]]
    if pred is not None:
        p = (pred[0, :3].clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        panels.append(np.full((obs.shape[0], 2, 3), 128, np.uint8))
        panels.append(np.moveaxis(p, 0, -1))
    img = np.concatenate(panels, 1)
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(img[..., ::-1])


def write_video(frames: list[np.ndarray], path: Path, fps: int = 10) -> Path | None:
    """BGR frames as an H.264 mp4 (:func:`worldplan.experiments.video.write_video`)."""
    return shared_write_video([f[..., ::-1] for f in frames], path, fps=fps)
