"""MPC for the truck backer-upper through the emulator or the true kinematics.

Gradient MPC, MPPI and CEM (``worldplan.planners.mpc``) plan the steering sequence through
``TruckTaskModel.stop_at_wall(dynamics)`` with the docking cost, re-planning at every step
from the true state (closed loop). What made them dock (docs/mpc.md):

* the first plan of an episode starts from a rollout of a feedback law through the same
  model: the pure-pursuit cascade (geometry, nothing learned) or the BPTT controller;
  from a constant-steering plan the optimiser stalls in a local minimum (a wrong-angle
  arrival or a jackknife);
* later plans start from the previous plan shifted by one step, its tail extended by the
  feedback law at the last predicted state;
* the horizon reaches the wall: it is cut at the predicted arrival plus a margin, so the
  terminal cost is the docking cost itself and a control step costs less near the wall.

A row ``<planner>@k`` plans every k-th control step only and in between steers by the
feedback law plus the next correction of the kept plan (the batch-1 latency budget).
Gradient MPC takes its gradient from a hand-written adjoint of the rollout
(:mod:`~worldplan.experiments.truck_adjoint`, ``MPCConfig.gradient``), autograd the
reference: at batch 1 the autograd graph's per-node overhead is most of a control step.

``python -m worldplan.experiments.truck_mpc --run DIR`` evaluates every planner through the
emulator of a finished ``worldplan truck`` run and through the true kinematics, on the
run's evaluation starts and on two other start sets; ``worldplan.experiments.truck`` evaluates the
rows of :class:`MPCConfig` in its ``evaluate`` stage.

Length: the truck's pre-stabilised MPC (its dynamics wrapper, the planners' rows, the
evaluation on three start sets and its command) is one experiment read top to bottom.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from worldplan.envs.truck import StartRegion, TruckParams, TruckTaskModel, simulate
from worldplan.envs.truck.kinematics import rear_x
from worldplan.experiments.truck_adjoint import AdjointGradientMPC, TruckAdjoint, adjoint_model
from worldplan.experiments.truck_baselines import CascadeController
from worldplan.planners.mpc import CEM, MPPI, GradientMPC, Planner

log = logging.getLogger(__name__)

__all__ = ["MPCConfig", "TruckMPC", "evaluate_rows", "feedback_plan", "make_planner"]

Feedback = Callable[[torch.Tensor], torch.Tensor]  # state [B, 4] -> steering [B]
GRADIENTS = ("adjoint", "autograd")  # MPCConfig.gradient


def _check_gradient(gradient: str) -> None:
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be 'adjoint' or 'autograd', got {gradient!r}")


@dataclass
class MPCConfig:
    """The MPC rows of ``worldplan truck evaluate`` and their planners' settings."""

    enabled: bool = True
    # rows evaluated in `truck evaluate`, through the emulator: planner name, or
    # "<planner>_bptt" for the plan warm-started from the BPTT controller's rollout
    rows: tuple[str, ...] = ("gradient",)
    starts: int = 1000  # the first N evaluation starts
    residual: bool = True  # plan corrections to the feedback law (pre-stabilised)
    horizon: int = 90  # longest horizon; cut at the predicted wall arrival + margin
    margin: int = 8
    first_iterations: int = 8  # optimiser steps of an episode's first plan
    iterations: int = 1  # and of every later plan
    arrival_every: int = 5  # re-predict the wall arrival every N steps (else count down)
    lr: float = 0.05  # Adam, on atanh of the normalised steering
    samples: int = 32  # MPPI / CEM candidates per problem
    replan_every: int = 1  # plan every k-th control step; between, steer by the shifted plan
    mppi_sigma_deg: float = 5.0
    mppi_temperature: float = 0.05
    cem_elites: int = 6
    # how gradient MPC differentiates the rollout: "adjoint" (hand-written reverse pass,
    # experiments/truck_adjoint.py; the cascade-corrected or plain rows through the emulator
    # or the kinematics) or "autograd" (the reference; also what a BPTT warm start uses)
    gradient: str = "adjoint"

    def __post_init__(self) -> None:
        _check_gradient(self.gradient)


# ------------------------------------------------------------------------- warm starts
def feedback_plan(feedback: Feedback, dynamics: Callable, state: torch.Tensor, horizon: int,
                  low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Roll ``feedback`` through ``dynamics`` from ``state [B, 4]``: plan ``[B, T, 1]``."""
    x, acts = state, []
    with torch.no_grad():
        for _ in range(horizon):
            a = feedback(x).reshape(-1, 1).to(x.dtype).clamp(low, high)
            acts.append(a)
            x = dynamics(x, a)
    return torch.stack(acts, 1)


def cascade_feedback(p: TruckParams) -> Feedback:
    """The pure-pursuit cascade as a torch feedback law (docking geometry, nothing learned)."""
    return CascadeController(p)  # callable on torch states; the adjoint reads its gains


def policy_feedback(policy: torch.nn.Module) -> Feedback:
    """A BPTT controller ``state [B, 4] -> [B, 1]`` as a feedback law."""
    return lambda x: policy(x)[:, 0]


# ----------------------------------------------------------------------------- planners
def make_planner(kind: str, tm: TruckTaskModel, dynamics: Callable, cfg: MPCConfig,
                 seed: int = 0, feedback: Feedback | None = None) -> Planner:
    """Gradient MPC, MPPI or CEM on ``stop_at_wall(dynamics)`` with the docking cost; with
    ``feedback``, on corrections to it (:func:`residual_dynamics`), bounded by +-max steer.
    Gradient MPC with ``cfg.gradient == "adjoint"`` and ``feedback`` the cascade (or None)
    is :class:`~worldplan.experiments.truck_adjoint.AdjointGradientMPC`."""
    _check_gradient(cfg.gradient)
    low, high = tm.action_low, tm.action_high
    model = dynamics
    if feedback is not None:
        dynamics = residual_dynamics(dynamics, feedback, low, high)
    args = (tm.stop_at_wall(dynamics), tm.cost, low, high, cfg.horizon)
    common = {"terminal_cost": tm.terminal_cost, "state_dim": tm.state_dim, "seed": seed}
    if kind == "gradient":
        cascade = feedback if isinstance(feedback, CascadeController) else None
        if cfg.gradient == "adjoint" and (feedback is None or cascade is not None):
            adjoint = TruckAdjoint(tm, adjoint_model(model, tm), cascade, float(low[0]),
                                   float(high[0]))
            return AdjointGradientMPC(adjoint, args[0], cfg.horizon,  # type: ignore[return-value]
                                      iterations=cfg.first_iterations, lr=cfg.lr)
        if cfg.gradient == "adjoint":
            log.info("gradient MPC warm-started from a learned controller: autograd")
        return GradientMPC(*args, iterations=cfg.first_iterations, lr=cfg.lr, **common)
    if kind == "mppi":
        return MPPI(*args, samples=cfg.samples, iterations=cfg.first_iterations,
                    noise_sigma=math.radians(cfg.mppi_sigma_deg) ** 2,
                    temperature=cfg.mppi_temperature, control_cost=0.0, **common)
    if kind == "cem":
        return CEM(*args, samples=cfg.samples, elites=cfg.cem_elites,
                   iterations=cfg.first_iterations, init_std=0.1, alpha=0.1, beta=2.0,
                   keep_elites=0.3, **common)
    raise ValueError(f"unknown planner {kind!r}: expected 'gradient', 'mppi' or 'cem'")


def residual_dynamics(dynamics: Callable, feedback: Feedback, low: torch.Tensor,
                      high: torch.Tensor) -> Callable:
    """Pre-stabilised prediction: ``(state [B, 4], v [B, 1]) -> next [B, 4]`` applies the
    steering ``clamp(feedback(state) + v)``; the plan is a correction to the feedback law
    (``v = 0`` drives the feedback law itself) rather than an open-loop steering sequence,
    so the hitch angle's instability is damped inside every prediction."""

    def step(state: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return dynamics(state, steering(state, v))

    def steering(state: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.max(torch.min(feedback(state).reshape(-1, 1) + v, high), low)

    step.steering = steering  # type: ignore[attr-defined]
    return step


class TruckMPC:
    """Closed-loop MPC over a batch of trucks: ``__call__(states [n, 4]) -> steering [n]``.

    ``residual=True`` (default): the planner optimises corrections ``v`` to ``feedback``
    through :func:`residual_dynamics`, starting from ``v = 0`` (the feedback law), and the
    truck steers ``feedback(state) + v_0``. ``residual=False``: the planner optimises the
    steering itself, the first plan of an episode starting from ``feedback``'s rollout.
    Either way, later calls start from the shifted plan with ``iterations`` optimiser steps
    (``first_iterations`` at an episode's first call), and the horizon is cut to the
    latest predicted wall arrival in the batch plus ``margin`` (at most ``cfg.horizon``).
    Finished episodes stay in the batch, held at the wall by ``stop_at_wall``.
    """

    def __init__(self, planner: Planner, tm: TruckTaskModel, dynamics: Callable,
                 feedback: Feedback, cfg: MPCConfig, residual: bool = True,
                 replan_every: int | None = None) -> None:
        self.replan_every = int(cfg.replan_every if replan_every is None else replan_every)
        if self.replan_every < 1:
            raise ValueError(f"replan_every must be at least 1, got {self.replan_every}")
        self.skipped = 0  # control steps since the last plan
        self.planner, self.tm, self.cfg = planner, tm, cfg
        self.feedback = feedback
        self.residual = residual
        self.model = planner.dynamics  # what the planner predicts with (stop_at_wall'ed)
        self.dynamics = tm.stop_at_wall(dynamics)
        self.plan: torch.Tensor | None = None
        self.arrival = cfg.horizon
        self.since = 0
        self.step_seconds: list[float] = []

    def reset(self) -> None:
        self.plan = None
        self.skipped = 0
        self.planner.reset()
        self.step_seconds = []

    def _arrival(self, state: torch.Tensor, plan: torch.Tensor) -> int:
        """Latest step (over the batch) at which ``plan`` reaches the wall; the horizon plus
        the margin if some plan does not."""
        if isinstance(self.planner, AdjointGradientMPC):
            return self.planner.arrival(state, plan, self.cfg.margin)
        p = self.tm.params
        x = state
        with torch.no_grad():
            for t in range(plan.shape[1]):
                if bool((rear_x(x, p) <= 0).all()):
                    return t
                x = self.model(x, plan[:, t])
        return plan.shape[1] + self.cfg.margin

    def _initial(self, state: torch.Tensor, horizon: int) -> torch.Tensor:
        if self.residual:
            return torch.zeros(state.shape[0], horizon, 1)
        low, high = self.tm.action_low, self.tm.action_high
        return feedback_plan(self.feedback, self.dynamics, state, horizon, low, high)

    def _extend(self, state: torch.Tensor, plan: torch.Tensor, horizon: int) -> torch.Tensor:
        if plan.shape[1] >= horizon:
            return plan[:, :horizon]
        if self.residual:
            return torch.cat([plan, plan.new_zeros(plan.shape[0], horizon - plan.shape[1], 1)], 1)
        low, high = self.tm.action_low, self.tm.action_high
        x = state
        with torch.no_grad():
            for t in range(plan.shape[1]):
                x = self.dynamics(x, plan[:, t])
        tail = feedback_plan(self.feedback, self.dynamics, x, horizon - plan.shape[1], low, high)
        return torch.cat([plan, tail], 1)

    def __call__(self, states: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        x = torch.as_tensor(states, dtype=torch.float32)
        cfg = self.cfg
        first = self.plan is None
        if not first and self.skipped + 1 < self.replan_every and self.plan.shape[1] > 1:
            return self._follow(x, start)
        if first:
            init = self._initial(x, cfg.horizon)
            horizon = min(cfg.horizon, self._arrival(x, init) + cfg.margin)
            init = init[:, :horizon]
        else:
            horizon = min(cfg.horizon, max(self.arrival - 1, 1) + cfg.margin)
            init = self._extend(x, self.plan, horizon)
        self.planner.horizon = horizon
        self.planner.iterations = cfg.first_iterations if first else cfg.iterations
        plan = self.planner.plan(x, init=init)
        self.since += 1
        if first or self.since >= cfg.arrival_every:
            self.arrival, self.since = self._arrival(x, plan), 0
        else:
            self.arrival -= 1
        self.plan = torch.cat([plan[:, 1:], plan[:, -1:]], 1)
        self.skipped = 0
        return self._steer(x, plan[:, 0], start)

    def _follow(self, x: torch.Tensor, start: float) -> np.ndarray:
        """A control step without planning: the next entry of the kept plan (with
        ``residual``, a correction to the feedback law at the state actually reached)."""
        self.skipped += 1
        self.arrival = max(self.arrival - 1, 1)
        action = self.plan[:, 0]
        self.plan = torch.cat([self.plan[:, 1:], self.plan[:, -1:]], 1)
        return self._steer(x, action, start)

    def _steer(self, x: torch.Tensor, action: torch.Tensor, start: float) -> np.ndarray:
        if self.residual:
            with torch.no_grad():
                action = self.model.__wrapped__.steering(x, action)
        self.step_seconds.append(time.perf_counter() - start)
        return action[:, 0].numpy()


# ----------------------------------------------------------------------------- evaluate
def run_mpc(kind: str, tm: TruckTaskModel, dynamics: Callable, feedback: Feedback,
            starts: np.ndarray, cfg: MPCConfig, seed: int = 0, progress: bool = False,
            replan_every: int | None = None) -> tuple[object, dict]:
    """Closed-loop MPC from every start at once (the env's float64 kinematics decide what
    happens); returns ``simulate``'s result and timing figures. ``replan_every``: plan
    every k-th control step (default ``cfg.replan_every``)."""
    planner = make_planner(kind, tm, dynamics, cfg, seed, feedback if cfg.residual else None)
    ctrl = TruckMPC(planner, tm, dynamics, feedback, cfg, cfg.residual, replan_every)
    cpu = time.process_time()
    result = simulate(starts, ctrl, tm.params, full_batch=True, progress=progress)
    cpu = time.process_time() - cpu
    steps = len(ctrl.step_seconds)
    timing = {"control_steps": steps, "batch": len(starts),
              "ms_per_control_step": 1000 * float(np.mean(ctrl.step_seconds)),
              "cpu_s": cpu,
              "problems_per_s": len(starts) * steps / max(sum(ctrl.step_seconds), 1e-9)}
    return result, timing


def evaluate_rows(rows: tuple[str, ...], tm: TruckTaskModel, emulator, policy,
                  starts: np.ndarray, cfg: MPCConfig, seed: int = 0, progress: bool = False,
                  summarise: Callable | None = None) -> tuple[dict, dict]:
    """Evaluate MPC ``rows`` (``"gradient"``, ``"mppi_bptt"``, ...; a ``"truth_"`` prefix
    plans through the true kinematics instead of ``emulator``) on ``starts [n, 4]``.
    Returns ``({row: simulate result}, {row: metrics})``."""
    if summarise is None:
        # a cycle: experiments.truck imports this module
        from worldplan.experiments.truck import summarise
    results, metrics = {}, {}
    for row in rows:
        name, every = parse_row(row)
        truth = name.startswith("truth_")
        name = name.removeprefix("truth_")
        kind, _, warm = name.partition("_")
        if warm == "bptt" and policy is None:
            log.info("no BPTT controller: skipping %s", row)
            continue
        dynamics = tm.step if truth else emulator.step
        feedback = policy_feedback(policy) if warm else cascade_feedback(tm.params)
        result, timing = run_mpc(kind, tm, dynamics, feedback, starts, cfg, seed, progress,
                                 every)
        results[f"mpc_{row}"] = result
        metrics[f"mpc_{row}"] = {**summarise(tm, result), **timing}
        m = metrics[f"mpc_{row}"]
        log.info("mpc_%-18s docked %.1f%% (strict %.1f%%) %.0f ms/step at batch %d", row,
                 100 * m["success_rate"], 100 * m["strict_success_rate"],
                 m["ms_per_control_step"], len(starts))
    return results, metrics


def parse_row(row: str) -> tuple[str, int | None]:
    """``"[truth_]<planner>[_bptt][@k]"`` -> (name without ``@k``, k or None); ``@k``
    plans every k-th control step."""
    name, at, every = row.partition("@")
    kind, _, warm = name.removeprefix("truth_").partition("_")
    ok = kind in ("gradient", "mppi", "cem") and warm in ("", "bptt")
    if at:
        ok = ok and every.isdigit() and int(every) >= 1
    if not ok:
        raise ValueError(f"unknown MPC row {row!r}: a planner ('gradient', 'mppi', 'cem'), "
                         "optionally '_bptt', a 'truth_' prefix and an '@k' suffix (plan every "
                         "k-th step, k >= 1)")
    return name, (int(every) if at else None)


def batch_one_latency(kind: str, tm: TruckTaskModel, dynamics: Callable, feedback: Feedback,
                      starts: np.ndarray, cfg: MPCConfig, replan_every: int | None = None
                      ) -> dict:
    """Per-control-step time at batch 1 over whole episodes from ``starts`` (one at a time)."""
    times, steps, cpu = [], 0, time.process_time()
    for s in starts:
        _, timing = run_mpc(kind, tm, dynamics, feedback, s[None], cfg,
                            replan_every=replan_every)
        times.append(timing["ms_per_control_step"])
        steps += timing["control_steps"]
    cpu = time.process_time() - cpu
    return {"ms_per_control_step": float(np.mean(times)), "episodes": len(starts),
            "control_steps": steps, "cpu_s": cpu,
            "cpu_ms_per_control_step": 1000 * cpu / max(steps, 1)}


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate measured on ``n`` episodes."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def markdown_table(report: dict) -> str:
    """The rows of a ``mpc.json`` report as a markdown table with 95% intervals."""
    lines = ["| start set | row | docked (95% CI) | strict (95% CI) | position error | "
             "angle error | jackknifed | ms / control step (batch) |",
             "|---|---|---|---|---|---|---|---|"]
    for set_name, rows in report.items():
        if not isinstance(rows, dict) or set_name in ("config", "batch_1"):
            continue
        for row, m in rows.items():
            n = m["episodes"]
            cells = []
            for key in ("success_rate", "strict_success_rate"):
                lo, hi = wilson(m[key], n)
                cells.append(f"{100 * m[key]:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})")
            lines.append(f"| {set_name} ({n}) | {row} | {cells[0]} | {cells[1]} | "
                         f"{m['final_position_error']:.3f} | "
                         f"{m['final_angle_error_deg']:.2f} deg | "
                         f"{100 * m['jackknife_rate']:.1f}% | "
                         f"{m['ms_per_control_step']:.0f} ({m['batch']}) |")
    return "\n".join(lines)


def start_sets(p: TruckParams, n: int, seed: int) -> dict[str, np.ndarray]:
    """The run's evaluation starts and two other sets drawn from the same region."""
    return {name: StartRegion().sample(np.random.default_rng(s), n, p)
            for name, s in (("evaluation", 10_000 + seed), ("other_a", 20_000 + seed),
                            ("other_b", 30_000 + seed))}


def main(argv: list[str] | None = None) -> None:
    """Every planner, through the emulator and the true kinematics, on three start sets."""
    # a cycle: experiments.truck imports this module
    from worldplan.experiments.truck import TruckConfig, load_emulator, load_policy, policy_path

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--run", required=True, type=Path, help="a finished `worldplan truck` run")
    ap.add_argument("--rows", nargs="+", default=["gradient", "gradient_bptt", "mppi", "cem",
                                                   "truth_gradient", "truth_mppi", "truth_cem"],
                    help="rows evaluated on the evaluation set")
    ap.add_argument("--sets", nargs="+", default=["evaluation", "other_a", "other_b"])
    ap.add_argument("--other-rows", nargs="+", default=["gradient", "mppi", "truth_gradient"],
                    help="rows evaluated on the sets other than the evaluation set")
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--latency-episodes", type=int, default=5)
    ap.add_argument("--latency-every", type=int, nargs="+", default=[1, 4],
                    help="batch-1 latency rows: plan every k-th control step")
    ap.add_argument("--gradient", choices=GRADIENTS, default=MPCConfig.gradient,
                    help="how gradient MPC differentiates the rollout (MPCConfig.gradient)")
    ap.add_argument("--latency-gradients", nargs="+", choices=GRADIENTS, default=list(GRADIENTS),
                    help="batch-1 latency rows: measured with each, one after the other")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--table", action="store_true",
                    help="only print the markdown table of an existing mpc.json")
    args = ap.parse_args(argv)
    if args.table:
        path = args.out or args.run / "mpc.json"
        if not path.is_file():
            ap.error(f"{path} does not exist: run without --table first")
        print(markdown_table(json.loads(path.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    tcfg = TruckConfig(seed=args.seed)
    p = tcfg.params()
    tm = TruckTaskModel(p)
    run_dir = args.run
    dirs = _RunDirs(run_dir)
    emulator = load_emulator(dirs, torch.device("cpu"))
    policy = None
    if policy_path(dirs, "emulator").exists():
        policy = load_policy(dirs, "emulator", tcfg)
    cfg = MPCConfig(gradient=args.gradient)
    sets = start_sets(p, args.episodes, args.seed)
    report: dict = {"config": asdict(cfg), "load_before": _loadavg()}
    for set_name in args.sets:
        rows = args.rows if set_name == "evaluation" else args.other_rows
        report[set_name] = {}
        for row in rows:  # written after every row: a long run can be read while it goes
            _, metrics = evaluate_rows((row,), tm, emulator, policy, sets[set_name], cfg,
                                       args.seed)
            report[set_name].update(metrics)
            (args.out or run_dir / "mpc.json").write_text(json.dumps(report, indent=2))
    if args.latency_episodes > 0:
        report["batch_1"] = {}
        for every in args.latency_every:
            for gradient in args.latency_gradients:  # side by side, in this one process
                name = ("gradient" if every == 1 else f"gradient@{every}") + f" ({gradient})"
                report["batch_1"][name] = {
                    **batch_one_latency("gradient", tm, emulator.step, cascade_feedback(p),
                                        sets["evaluation"][: args.latency_episodes],
                                        replace(cfg, gradient=gradient), every),
                    "load": _loadavg()}
                log.info("batch 1, %s: %.1f ms per control step (load %s)", name,
                         report["batch_1"][name]["ms_per_control_step"], _loadavg())
    report["load_after"] = _loadavg()
    out = args.out or run_dir / "mpc.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


@dataclass
class _RunDirs:
    """The folders of a run that ``load_emulator``/``load_policy`` read."""

    root: Path
    checkpoints: Path = field(init=False)

    def __post_init__(self) -> None:
        self.checkpoints = Path(self.root) / "checkpoints"


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


if __name__ == "__main__":
    main()
