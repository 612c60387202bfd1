"""The recipes behind the issue's claims, shared by the tests (which assert the numbers)
and :mod:`worldplan.worldmodels.figures` (which draws them): multimodal futures, action
sensitivity with and without z-dropout, and uncertainty AUROC in vs out of distribution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldplan.worldmodels.dataset import load_dataset, write_dataset
from worldplan.worldmodels.deterministic import DeterministicModel
from worldplan.worldmodels.ensemble import Ensemble
from worldplan.worldmodels.stochastic import StochasticModel
from worldplan.worldmodels.synthetic import bimodal_episodes, bimodal_truth, smooth_episodes
from worldplan.worldmodels.training import TrainConfig, train_model
from worldplan.worldmodels.uncertainty import auroc, mc_uncertainty

log = logging.getLogger(__name__)

MODE_TOL = 0.3  # "near a mode": within 0.3 of it; the two modes are 2.0 apart
QUERY_STATE, QUERY_ACTION = 0.0, 0.4


@dataclass
class BimodalRecipe:
    """Training recipe for the bimodal task (tests use the defaults)."""

    episodes: int = 500
    det_epochs: int = 3
    sto_epochs: int = 60
    z_dim: int = 1
    beta: float = 0.05
    recon: str = "l1"
    p_z: float = 0.5
    z_dropout: str = "zero"
    lr: float = 5e-3
    seed: int = 0


def train_bimodal(root: Path, recipe: BimodalRecipe | None = None,
                  progress: bool = False) -> dict[str, torch.nn.Module]:
    """Deterministic model plus two cVAEs warm-started from it on the bimodal task: with
    z-dropout (``zdrop``, the recipe's ``p_z``/``z_dropout``) and without (``no_zdrop``,
    p_z = 0). Returns ``{"det", "zdrop", "no_zdrop"}`` in eval mode."""
    r = recipe or BimodalRecipe()
    path = Path(root) / "bimodal"
    if not (path / "manifest.json").exists():
        write_dataset(path, bimodal_episodes(n=r.episodes, T=10, seed=r.seed), task="bimodal",
                      dt=1.0, seed=r.seed)
    ds = load_dataset(path)
    torch.manual_seed(r.seed)
    det = DeterministicModel(1, 1, hidden=64, dropout=0.0)
    train_model(det, ds, TrainConfig(epochs=r.det_epochs, lr=3e-3, seed=r.seed),
                progress=progress)
    models: dict[str, torch.nn.Module] = {"det": det.eval()}
    for name, p_z in (("zdrop", r.p_z), ("no_zdrop", 0.0)):
        torch.manual_seed(r.seed + 1)
        sto = StochasticModel.from_deterministic(det, z_dim=r.z_dim, beta=r.beta, p_z=p_z,
                                                 z_dropout=r.z_dropout, recon=r.recon)
        train_model(sto, ds, TrainConfig(epochs=r.sto_epochs, lr=r.lr, lr_schedule="cosine",
                                         seed=r.seed), progress=progress)
        models[name] = sto.eval()
    return models


@torch.no_grad()
def multimodal_stats(det: torch.nn.Module, sto: StochasticModel, n: int = 1000,
                     seed: int = 0) -> dict[str, float | np.ndarray]:
    """At one state and action: the fraction of deterministic predictions between the
    modes (farther than ``MODE_TOL`` from both), and of ``n`` stochastic samples (z from
    the prior) within ``MODE_TOL`` of a mode, overall and per mode."""
    s, a = torch.full((n, 1), QUERY_STATE), torch.full((n, 1), QUERY_ACTION)
    lo, hi = bimodal_truth(QUERY_STATE, QUERY_ACTION)
    pd = det.step(s, a).numpy()[:, 0]
    z = sto.sample_prior(n, generator=torch.Generator().manual_seed(seed))
    ps = sto.step(s, a, z).numpy()[:, 0]
    near_lo, near_hi = np.abs(ps - lo) < MODE_TOL, np.abs(ps - hi) < MODE_TOL
    near = near_lo | near_hi
    return {
        "det_between": float(np.mean((pd > lo + MODE_TOL) & (pd < hi - MODE_TOL))),
        "sto_near_mode": float(near.mean()),
        "mode_low_share": float(near_lo.sum() / max(near.sum(), 1)),
        "mode_high_share": float(near_hi.sum() / max(near.sum(), 1)),
        "det_predictions": pd, "sto_samples": ps, "modes": np.array([lo, hi]),
    }


@torch.no_grad()
def action_sensitivity(model: StochasticModel, n: int = 1000, seed: int = 1,
                       a_lo: float = -0.8, a_hi: float = 0.8, gain: float = 0.5) -> float:
    """How far the prediction moves when only the action moves (``a_lo -> a_hi``), with
    the same z from the prior for both, as a fraction of how far the truth moves
    (``gain * (a_hi - a_lo)``) on the bimodal task."""
    g = torch.Generator().manual_seed(seed)
    z = model.sample_prior(n, generator=g)
    s = torch.randn(n, 1, generator=g)
    lo = model.step(s, torch.full((n, 1), a_lo), z)
    hi = model.step(s, torch.full((n, 1), a_hi), z)
    return float((hi - lo).mean() / (gain * (a_hi - a_lo)))


def train_uncertainty(root: Path, seed: int = 0, det_epochs: int = 6, ens_epochs: int = 4,
                      progress: bool = False) -> dict[str, torch.nn.Module]:
    """A dropout MLP and a K=4 ensemble on :func:`smooth_episodes` (states in the unit
    disc, actions in [-1, 1]^2). Returns ``{"det", "ens"}`` in eval mode."""
    path = Path(root) / "smooth"
    if not (path / "manifest.json").exists():
        write_dataset(path, smooth_episodes(n=100, T=20, seed=seed), task="smooth", dt=0.1,
                      seed=seed)
    ds = load_dataset(path)
    torch.manual_seed(seed)
    det = DeterministicModel(2, 2, hidden=64, dropout=0.1)
    train_model(det, ds, TrainConfig(epochs=det_epochs, lr=3e-3, lr_schedule="cosine",
                                     seed=seed), progress=progress)
    ens = Ensemble(2, 2, k=4, hidden=64, dropout=0.0)
    train_model(ens, ds, TrainConfig(epochs=ens_epochs, lr=3e-3, lr_schedule="cosine",
                                     seed=seed), progress=progress)
    return {"det": det.eval(), "ens": ens.eval()}


def ood_queries(n: int = 400, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-distribution states (radius < 0.95), out-of-distribution states (radius 2-3) and
    actions ``[n, 1, 2]`` in [-1, 1]."""
    g = np.random.default_rng(seed)
    r_in, r_out = np.sqrt(g.uniform(0, 1, n)) * 0.95, g.uniform(2.0, 3.0, n)
    th = g.uniform(0, 2 * np.pi, 2 * n)
    s_in = np.stack([r_in * np.cos(th[:n]), r_in * np.sin(th[:n])], 1)
    s_out = np.stack([r_out * np.cos(th[n:]), r_out * np.sin(th[n:])], 1)
    a = g.uniform(-1, 1, (n, 1, 2))
    f = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return f(s_in), f(s_out), f(a)


@torch.no_grad()
def uncertainty_scores(det: DeterministicModel, ens: Ensemble, states: torch.Tensor,
                       actions: torch.Tensor, n_mc: int = 20) -> dict[str, np.ndarray]:
    """One-step MC-dropout variance and ensemble disagreement (normalised, summed over
    state dimensions) per query ``[N]``."""
    mc = mc_uncertainty(det, states, actions, n=n_mc).total(det)[:, 0]
    en = (ens.disagreement(states, actions) / ens.delta_std**2).sum(-1)[:, 0]
    return {"mc": mc.numpy(), "ensemble": en.numpy()}


def uncertainty_auroc(det: DeterministicModel, ens: Ensemble) -> dict[str, float]:
    s_in, s_out, a = ood_queries()
    u_in = uncertainty_scores(det, ens, s_in, a)
    u_out = uncertainty_scores(det, ens, s_out, a)
    return {k: auroc(u_in[k], u_out[k]) for k in u_in}
