"""Figures and videos of the truck experiment (one figure per claim, PNG)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worldplan.envs.truck import (  # noqa: E402
    Outcome,  # noqa: E402
    TruckParams,
    simulate,
    trailer_rear,
)
from worldplan.envs.truck.kinematics import pose_from_rear  # noqa: E402
from worldplan.envs.truck.render import YardCanvas  # noqa: E402
from worldplan.experiments.common import save_figure  # noqa: E402
from worldplan.experiments.video import write_video  # noqa: E402


def training_curve(history: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        if key in history and len(history[key]):
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised units)")
    ax.set_yscale("log")
    ax.set_title("Emulator training")
    ax.legend()
    return save_figure(fig, path)


def horizon_error(errors: dict, path: Path) -> Path:
    steps = np.arange(1, len(errors["position"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, errors["position"], "o-", label="RMS hitch position (units)")
    ax2 = ax.twinx()
    ax2.plot(steps, errors["heading_deg"], "s-", color="tab:orange", label="RMS heading (deg)")
    ax.set_xlabel("open-loop horizon (steps)")
    ax.set_ylabel("RMS position error (units)")
    ax2.set_ylabel("RMS heading error (deg)")
    ax.set_title(f"Emulator error vs horizon ({int(errors['windows'])} held-out windows)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88))
    return save_figure(fig, path)


def policy_training(histories: dict[str, dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for source, h in histories.items():
        cost = np.asarray(h.get("cost", []))
        if len(cost):
            k = max(1, len(cost) // 100)
            smooth = np.convolve(cost, np.ones(k) / k, mode="valid")
            ax.plot(smooth, label=f"through {source}")
            lessons = np.asarray(h.get("lesson", []))
            for b in np.flatnonzero(np.diff(lessons)):
                ax.axvline(b, color="grey", lw=0.5, alpha=0.4)
    ax.set_yscale("log")
    ax.set_xlabel("update (grey lines: next lesson of the curriculum)")
    ax.set_ylabel("mean trajectory cost")
    ax.set_title("Controller training by backprop through time")
    ax.legend()
    return save_figure(fig, path)


def success_bars(metrics: dict, path: Path) -> Path:
    names = [k for k in metrics if not k.startswith("_")]
    rate = [100 * metrics[k]["success_rate"] for k in names]
    strict = [100 * metrics[k]["strict_success_rate"] for k in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, rate, 0.4, label="docked (1 unit, 10 deg)")
    ax.bar(x + 0.2, strict, 0.4, label="strict (0.5 unit, 5 deg)")
    for xi, r in zip(x, rate, strict=True):
        ax.text(xi - 0.2, r + 1, f"{r:.1f}", ha="center", fontsize=8)
    n0 = metrics[names[0]]["episodes"]
    labels = [k if metrics[k]["episodes"] == n0 else f"{k}\n(first {metrics[k]['episodes']})"
              for k in names]
    ax.set_xticks(x, labels, rotation=15)
    ax.set_ylim(0, 110)
    ax.set_xlabel("controller")
    ax.set_ylabel("success (%)")
    ax.set_title(f"Docking success on {metrics[names[0]]['episodes']} seeded starts", pad=28)
    # above the plot, so that it never hides a bar
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
    return save_figure(fig, path)


def grid_starts(p: TruckParams) -> np.ndarray:
    """Nine starting poses on a grid (rear 40 units out; offsets -18, 0, 18; trailer
    headings -60, 0, 60 degrees), as in Nguyen & Widrow's figures."""
    ys, headings = [18.0, 0.0, -18.0], np.radians([-60.0, 0.0, 60.0])
    ry, th = np.meshgrid(ys, headings, indexing="ij")
    return pose_from_rear(40.0, ry.ravel(), th.ravel(), 0.0, p)


def trajectory_grid(controller: Callable, p: TruckParams, path: Path) -> Path:
    """One panel per start of :func:`grid_starts`: the truck every few steps (faded),
    at its start and where it meets the wall (solid), in yard units, with a legend."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    result = simulate(grid_starts(p), controller, p)
    canvas = YardCanvas(p, scale=3.0)
    x0 = p.yard_x[0] - canvas.margin
    y1 = p.yard_y[1] + canvas.margin
    extent = (x0, x0 + canvas.width / canvas.scale, y1 - canvas.height / canvas.scale, y1)
    fig, axes = plt.subplots(3, 3, figsize=(10, 8.5), sharex=True, sharey=True)
    for ax, traj, steps, outcome in zip(axes.ravel(), result.trajectory, result.steps,
                                        result.outcome, strict=True):
        img = canvas.background()
        canvas.draw_path(img, trailer_rear(traj[: steps + 1], p), (120, 120, 120))
        for k in range(0, steps + 1, max(1, int(8 / p.dt))):
            canvas.draw_truck(img, traj[k], faded=True)
        canvas.draw_truck(img, traj[0])
        canvas.draw_truck(img, traj[steps])
        ax.imshow(img, extent=extent)
        ax.set_title(f"{int(steps)} steps, {_outcome_name(outcome)}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("x (units; dock wall at x = 0)")
    for ax in axes[:, 0]:
        ax.set_ylabel("y (units)")
    handles = [Patch(color=np.array(TRAILER) / 255, label="trailer"),
               Patch(color=np.array(CAB) / 255, label="cab"),
               Line2D([], [], color="0.47", label="path of the trailer's rear"),
               Line2D([], [], marker="o", ls="", color=(0, 160 / 255, 0), label="loading dock"),
               Patch(facecolor="none", edgecolor="0.6",
                     label=f"truck every {max(1, int(8 / p.dt))} steps (faded)")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("Docking from nine starts (rear 40 units out, offsets -18/0/18, "
                 "trailer headings -60/0/60 deg)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return save_figure(fig, path)


TRAILER, CAB = (40, 80, 200), (200, 50, 50)  # colours of envs.truck.render, RGB


def _outcome_name(code) -> str:
    return Outcome(int(code)).name.lower().replace("_", " ")


def docking_video(controller: Callable, p: TruckParams, starts: np.ndarray, path: Path,
                  fps: int = 20) -> Path | None:
    """An H.264 mp4 of the controller docking from each start in turn."""
    if len(starts) == 0:
        return None
    result = simulate(starts, controller, p)
    canvas = YardCanvas(p)

    def frames():
        for traj, steps in zip(result.trajectory, result.steps, strict=True):
            for k in range(steps + 1):
                img = canvas.background()
                canvas.draw_path(img, trailer_rear(traj[: k + 1], p))
                canvas.draw_truck(img, traj[k])
                yield img

    return write_video(frames(), path, fps=fps)
