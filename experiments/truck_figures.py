"""Figures and videos of the truck experiment (one figure per claim, PNG)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worldplan.envs.truck import TruckParams, simulate, trailer_rear  # noqa: E402
from worldplan.envs.truck.render import YardCanvas  # noqa: E402
from worldplan.experiments.common import save_figure  # noqa: E402
from worldplan.worldmodels.checkpoint import atomic_write_bytes  # noqa: E402


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
    ax.plot(steps, errors["position"], "o-", label="hitch position (units)")
    ax2 = ax.twinx()
    ax2.plot(steps, errors["heading_deg"], "s-", color="tab:orange", label="heading (deg)")
    ax.set_xlabel("open-loop horizon (steps)")
    ax.set_ylabel("position error (units)")
    ax2.set_ylabel("heading error (deg)")
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
    ax.set_ylabel("success (%)")
    ax.set_title(f"Docking success on {metrics[names[0]]['episodes']} seeded starts")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def grid_starts(p: TruckParams) -> np.ndarray:
    """Nine starting poses on a grid (rear 40 units out; offsets -18, 0, 18; trailer
    headings -60, 0, 60 degrees), as in Nguyen & Widrow's figures."""
    from worldplan.envs.truck.kinematics import pose_from_rear

    ys, headings = [18.0, 0.0, -18.0], np.radians([-60.0, 0.0, 60.0])
    ry, th = np.meshgrid(ys, headings, indexing="ij")
    return pose_from_rear(40.0, ry.ravel(), th.ravel(), 0.0, p)


def trajectory_grid(controller: Callable, p: TruckParams, path: Path) -> Path:
    """One panel per start of :func:`grid_starts`: the truck every few steps, from the
    start (solid) to where it meets the wall (solid)."""
    result = simulate(grid_starts(p), controller, p)
    canvas = YardCanvas(p, scale=3.0)
    panels = []
    for traj, steps in zip(result.trajectory, result.steps, strict=True):
        img = canvas.background()
        canvas.draw_path(img, trailer_rear(traj[: steps + 1], p), (120, 120, 120))
        for k in range(0, steps + 1, max(1, int(8 / p.dt))):
            canvas.draw_truck(img, traj[k], faded=True)
        canvas.draw_truck(img, traj[0])
        canvas.draw_truck(img, traj[steps])
        panels.append(cv2.copyMakeBorder(img, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(0, 0, 0)))
    rows = [np.concatenate(panels[i:i + 3], axis=1) for i in range(0, len(panels), 3)]
    ok, png = cv2.imencode(".png", np.concatenate(rows, axis=0)[:, :, ::-1])
    return atomic_write_bytes(path, png.tobytes())


def docking_video(controller: Callable, p: TruckParams, starts: np.ndarray, path: Path,
                  fps: int = 20) -> Path | None:
    """An mp4 of the controller docking from each start in turn (written atomically)."""
    if len(starts) == 0:
        return None
    result = simulate(starts, controller, p)
    canvas = YardCanvas(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (canvas.width, canvas.height))
    try:
        for traj, steps in zip(result.trajectory, result.steps, strict=True):
            for k in range(steps + 1):
                img = canvas.background()
                canvas.draw_path(img, trailer_rear(traj[: k + 1], p))
                canvas.draw_truck(img, traj[k])
                writer.write(img[:, :, ::-1].copy())
    finally:
        writer.release()
    tmp.replace(path)
    return path
