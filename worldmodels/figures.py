"""Figures and numbers for the issue's claims::

    python -m worldplan.worldmodels.figures OUT_DIR

Writes ``multimodal.png``, ``action_sensitivity.png``, ``uncertainty.png`` and
``numbers.json`` (the measured fractions, sensitivities and AUROCs) into OUT_DIR.
Trains the small synthetic models of :mod:`worldplan.worldmodels.demos` (a few minutes on CPU).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from worldplan.checkpoint import atomic_write_bytes, atomic_write_text
from worldplan.worldmodels.demos import (
    MODE_TOL,
    QUERY_ACTION,
    QUERY_STATE,
    action_sensitivity,
    multimodal_stats,
    train_bimodal,
    train_uncertainty,
    uncertainty_auroc,
    uncertainty_scores,
)
from worldplan.worldmodels.synthetic import bimodal_truth

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def multimodal_figure(stats: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    lo, hi = stats["modes"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(lo - 1.0, hi + 1.0, 81)
    ax.hist(stats["sto_samples"], bins=bins, alpha=0.7, label="stochastic, z ~ prior (1000)")
    ax.hist(stats["det_predictions"], bins=bins, alpha=0.7, label="deterministic")
    for m in (lo, hi):
        ax.axvspan(m - MODE_TOL, m + MODE_TOL, color="green", alpha=0.12)
        ax.axvline(m, color="green", lw=1)
    ax.set_xlabel(f"predicted next state (s={QUERY_STATE}, a={QUERY_ACTION}); "
                  "green: true modes +/- tolerance")
    ax.set_ylabel("count")
    ax.set_title(f"Multimodal futures: {stats['sto_near_mode']:.1%} of samples near a mode "
                 f"({stats['mode_low_share']:.0%}/{stats['mode_high_share']:.0%}); "
                 f"deterministic between: {stats['det_between']:.0%}", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


@torch.no_grad()
def action_figure(models: dict, sens: dict[str, float], path: Path) -> Path:
    import matplotlib.pyplot as plt

    actions = torch.linspace(-1, 1, 41)
    n = 200
    z_gen = torch.Generator().manual_seed(3)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, name, title in ((axes[0], "zdrop", "with z-dropout"),
                            (axes[1], "no_zdrop", "without z-dropout (ablation)")):
        m = models[name]
        z = m.sample_prior(n, generator=z_gen)
        means = []
        for a in actions:
            pred = m.step(torch.zeros(n, 1), torch.full((n, 1), float(a)), z)[:, 0]
            means.append(float(pred.mean()))
            ax.scatter(np.full(20, float(a)), pred[:20].numpy(), s=2, color="grey", alpha=0.4)
        lo, hi = bimodal_truth(0.0, actions.numpy())
        ax.plot(actions, (lo + hi) / 2, "g--", label="truth (mean of the modes)")
        ax.plot(actions, lo, "g:", lw=0.8)
        ax.plot(actions, hi, "g:", lw=0.8)
        ax.plot(actions, means, "b-", label="model mean over z ~ prior")
        ax.set_title(f"{title}: sensitivity {sens[name]:.2f}", fontsize=9)
        ax.set_xlabel("action (state fixed at 0)")
    axes[0].set_ylabel("predicted next state")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


@torch.no_grad()
def uncertainty_figure(models: dict, aucs: dict[str, float], path: Path) -> Path:
    import matplotlib.pyplot as plt

    g = torch.linspace(-3, 3, 61)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    states = torch.stack([xx.flatten(), yy.flatten()], 1)
    actions = torch.zeros(len(states), 1, 2)
    scores = uncertainty_scores(models["det"], models["ens"], states, actions)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, title in ((axes[0], "mc", "MC-dropout variance"),
                           (axes[1], "ensemble", "ensemble disagreement")):
        im = ax.imshow(np.log10(scores[key].reshape(61, 61) + 1e-8), origin="lower",
                       extent=(-3, 3, -3, 3), cmap="magma")
        circle = plt.Circle((0, 0), 1.0, fill=False, color="cyan", lw=1.5)
        ax.add_patch(circle)
        ax.set_title(f"{title} (log10); AUROC {aucs[key]:.3f}", fontsize=9)
        ax.set_xlabel("state x (cyan: data support)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_ylabel("state y")
    return _save(fig, path)


def make_figures(out: Path, progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log.info("training the bimodal models")
        bi = train_bimodal(Path(tmp), progress=progress)
        log.info("training the uncertainty models")
        unc = train_uncertainty(Path(tmp), progress=progress)
    stats = multimodal_stats(bi["det"], bi["zdrop"])
    stats_ablation = multimodal_stats(bi["det"], bi["no_zdrop"])
    sens = {k: action_sensitivity(bi[k]) for k in ("zdrop", "no_zdrop")}
    aucs = uncertainty_auroc(unc["det"], unc["ens"])
    multimodal_figure(stats, out / "multimodal.png")
    action_figure(bi, sens, out / "action_sensitivity.png")
    uncertainty_figure(unc, aucs, out / "uncertainty.png")
    scalar = lambda d: {k: v for k, v in d.items() if isinstance(v, float)}  # noqa: E731
    numbers = {"multimodal_z_dropout": scalar(stats),
               "multimodal_no_z_dropout": scalar(stats_ablation),
               "action_sensitivity": sens, "auroc": aucs}
    atomic_write_text(out / "numbers.json", json.dumps(numbers, indent=1) + "\n")
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description="figures for the world-model claims")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    numbers = make_figures(args.out, progress=not args.no_progress)
    print(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main()
