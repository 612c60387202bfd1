"""The behaviours issue 3 asks to show, on synthetic tasks with known dynamics:
multimodal futures, action sensitivity with z-dropout (and its ablation), uncertainty
that separates in- from out-of-distribution inputs, and crash-safe checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from worldplan.checkpoint import load_checkpoint
from worldplan.worldmodels import DeterministicModel, load_model
from worldplan.worldmodels.dataset import write_dataset
from worldplan.worldmodels.demos import (
    MODE_TOL,
    action_sensitivity,
    multimodal_stats,
    train_bimodal,
    train_uncertainty,
    uncertainty_auroc,
)
from worldplan.worldmodels.stochastic import StochasticModel
from worldplan.worldmodels.synthetic import bimodal_truth, toy_episodes
from worldplan.worldmodels.uncertainty import mc_uncertainty

# timings and bit-exact comparisons on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bimodal(tmp_path_factory):
    """The deterministic model and the two cVAEs of the demos recipe (~1-2 min)."""
    return train_bimodal(tmp_path_factory.mktemp("bimodal"))


@pytest.mark.slow
def test_multimodal_futures(bimodal) -> None:
    stats = multimodal_stats(bimodal["det"], bimodal["zdrop"], n=1000)
    ablation = multimodal_stats(bimodal["det"], bimodal["no_zdrop"], n=1000)
    print(f"multimodal: deterministic between {stats['det_between']:.3f}; near a mode: "
          f"z-dropout {stats['sto_near_mode']:.3f} ({stats['mode_low_share']:.2f}/"
          f"{stats['mode_high_share']:.2f}), without {ablation['sto_near_mode']:.3f}")
    assert stats["det_between"] >= 0.9
    assert stats["sto_near_mode"] >= 0.9
    assert 0.35 <= stats["mode_low_share"] <= 0.65
    assert 0.35 <= stats["mode_high_share"] <= 0.65
    # z=None draws from the prior inside step: samples differ and stay near the modes
    s, a = torch.zeros(1000, 1), torch.full((1000, 1), 0.4)
    with torch.no_grad():
        free = bimodal["zdrop"].step(s, a).numpy()[:, 0]
    lo, hi = bimodal_truth(0.0, 0.4)
    assert np.mean((np.abs(free - lo) < MODE_TOL) | (np.abs(free - hi) < MODE_TOL)) >= 0.85


@pytest.mark.slow
def test_action_sensitivity_with_z_dropout(bimodal) -> None:
    with_zd = action_sensitivity(bimodal["zdrop"])
    without = action_sensitivity(bimodal["no_zdrop"])
    print(f"action sensitivity: z-dropout {with_zd:.3f}, without {without:.3f}")
    assert with_zd >= 0.8
    # the ablation shows PPUU's failure mode: z carries part of the action's effect
    assert without < 0.8 and without < with_zd - 0.2


def test_uncertainty_separates_out_of_distribution(tmp_path: Path) -> None:
    models = train_uncertainty(tmp_path)
    aucs = uncertainty_auroc(models["det"], models["ens"])
    print(f"AUROC: MC-dropout {aucs['mc']:.3f}, ensemble {aucs['ensemble']:.3f}")
    assert aucs["mc"] >= 0.9 and aucs["ensemble"] >= 0.9


def test_mc_uncertainty_is_batched_and_differentiable() -> None:
    torch.manual_seed(0)
    m = StochasticModel(3, 2, ncond=2, hidden=16, z_dim=2, dropout=0.2).eval()
    ctx = torch.randn(4, 2, 3)
    acts = torch.randn(4, 6, 2, requires_grad=True)
    z = torch.randn(4, 6, 2)
    u = mc_uncertainty(m, ctx, acts, n=8, z=z)
    assert u.mean.shape == u.var.shape == (4, 6, 3)
    assert (u.var[:, 1:] > 0).all()
    u.total(m).sum().backward()
    assert acts.grad is not None and acts.grad.abs().sum() > 0
    assert not m.mc_dropout and not m.training  # switches restored
    m.dropout = 0.0
    for mod in m.modules():
        if hasattr(mod, "force"):
            mod.p = 0.0
    u0 = mc_uncertainty(m, ctx, acts, n=4, z=z)  # same z for every sample: no variance
    assert float(u0.var.detach().abs().max()) < 1e-10
    with pytest.raises(ValueError, match="n \\(MC samples\\)"):
        mc_uncertainty(m, ctx, acts, n=1)


def test_stochastic_warm_start_and_latent_forms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    det = DeterministicModel(3, 2, ncond=2, hidden=16).eval()
    for form in ("zero", "prior"):
        sto = StochasticModel.from_deterministic(det, z_dim=3, z_dropout=form).eval()
        ctx, a = torch.randn(5, 2, 3), torch.randn(5, 2)
        torch.testing.assert_close(sto.step(ctx, a), det.step(ctx, a))  # embed starts at 0
        assert sto.config()["z_dropout"] == form
    with pytest.raises(ValueError, match="z_dropout must be one of"):
        StochasticModel(3, 2, z_dropout="sometimes")
    with pytest.raises(ValueError, match=r"z must have shape \[5, 3\]"):
        sto.step(ctx, a, z=torch.zeros(5, 2))
    learned = StochasticModel(3, 2, ncond=2, hidden=16, z_dim=3, learned_prior=True).eval()
    out = learned.rollout(torch.randn(5, 2, 3), torch.randn(5, 4, 2))
    assert out.shape == (5, 4, 3)


# ------------------------------------------------------------------ crash safety
WRITER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from worldplan.worldmodels import DeterministicModel, TrainConfig, load_dataset, train_model
    ds = load_dataset(sys.argv[1])
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, hidden=768, layers=3)
    train_model(m, ds, TrainConfig(epochs=1000, batch_size=8, checkpoint_every=1),
                checkpoint_dir=sys.argv[2], progress=False)
""")


def test_killed_while_writing_checkpoint_leaves_previous_loadable(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", toy_episodes(n=6, T=10), task="toy", dt=0.1)
    ckpt = tmp_path / "ck"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    torn = False
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(data), str(ckpt)], env=env)
        try:
            deadline = time.time() + 90
            while not (ckpt / "last.pt").exists():  # a first checkpoint is complete
                assert proc.poll() is None, "the writer died before its first checkpoint"
                assert time.time() < deadline
                time.sleep(0.02)
            # kill the moment a later write is in progress (its temporary file exists)
            while not any(ckpt.glob(".last.pt.*.tmp")) and time.time() < deadline:
                time.sleep(0.0005)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        torn = any(ckpt.glob(".last.pt.*.tmp"))
        payload = load_checkpoint(ckpt / "last.pt", required=("state_dict", "training"))
        assert payload["training"]["state"]["step"] >= 1
        load_model(ckpt / "last.pt")
        if torn:
            break
    assert torn, "no kill landed during a write (no temporary file left behind)"


# ------------------------------------------------------------------ truck rollouts
TRUCK_POSITION_RMS_30 = 1.5  # yard units after 30 steps (the truck travels 30 units)
TRUCK_HEADING_RMS_30 = 10.0  # degrees, cab and trailer


def test_truck_rollouts_stay_close_to_the_kinematics(tmp_path: Path) -> None:
    """30-step open-loop rollouts of a deterministic model trained on random-steering truck
    episodes, on held-out episodes (measured: ~0.04 / 0.37 / 0.76 units at 1 / 10 / 30
    steps; headings ~2 / 5 degrees at 30 steps)."""
    from worldplan.experiments.truck import CollectConfig, TruckConfig, collect_episodes
    from worldplan.worldmodels import TrainConfig, evaluate_horizon_error, load_dataset, train_model

    cfg = TruckConfig(collect=CollectConfig(episodes=600))
    episodes = collect_episodes(cfg, np.random.default_rng(0))
    ds = load_dataset(write_dataset(tmp_path / "truck", episodes, task="truck", dt=cfg.dt))
    torch.manual_seed(0)
    model = DeterministicModel(4, 1, hidden=128, layers=3, dropout=0.0)
    train_model(model, ds, TrainConfig(epochs=10, batch_size=256, lr=3e-3, npred=8,
                                       lr_schedule="cosine"), progress=False)
    err = evaluate_horizon_error(model, ds, "test", horizon=30, per_dim=True)  # [30, 4]
    position = np.linalg.norm(err[:, :2], axis=1)
    heading = np.degrees(err[:, 2:])
    print(f"truck rollout RMS error: position {position[[0, 9, 29]].round(3)} units, "
          f"heading at 30 steps {heading[29].round(2)} deg")
    assert position[29] < TRUCK_POSITION_RMS_30
    assert (heading[29] < TRUCK_HEADING_RMS_30).all()
    assert position[0] < position[9] < position[29]  # errors compound with the horizon


def test_frozen_masks_make_each_sample_one_network() -> None:
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, hidden=32, dropout=0.3).eval()
    s, a = torch.randn(8, 3), torch.randn(8, 2)
    m.mc_dropout = True
    with m.frozen_masks():
        torch.testing.assert_close(m.step(s, a), m.step(s, a))  # same masks every call
    assert not torch.allclose(m.step(s, a), m.step(s, a))  # fresh masks again
    m.mc_dropout = False
    acts = torch.randn(8, 5, 2, requires_grad=True)
    u = mc_uncertainty(m, s, acts, n=6, masks="trajectory")
    assert (u.var > 0).all()
    u.total(m).sum().backward()
    assert acts.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="masks must be"):
        mc_uncertainty(m, s, acts, n=6, masks="layer")


def test_bulk_bernoulli_masks_have_the_dropout_rate_and_unit_mean() -> None:
    from worldplan.worldmodels.base import bernoulli_masks

    torch.manual_seed(0)
    for p in (0.1, 0.5):
        m = bernoulli_masks(200_001, p, torch.zeros(1))
        assert m.shape == (200_001,) and m.dtype == torch.float32
        dropped = float((m == 0).float().mean())
        assert abs(dropped - p) < 0.005  # binomial std ~0.001
        assert abs(float(m.mean()) - 1.0) < 0.01
        assert set(torch.unique(m).tolist()) == {0.0, float(m.max())}


def test_pooled_masks_are_fresh_per_call_and_reproducible() -> None:
    """Pooled masks differ from call to call and row to row (as per-call draws do), give
    MC variances like the per-call draws, and a reseeded run repeats itself."""
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, hidden=32, dropout=0.3).eval()
    s, a = torch.randn(8, 3), torch.randn(8, 2)
    m.mc_dropout = True
    with m.pooled_masks(calls=4):
        outs = [m.step(s, a) for _ in range(9)]  # crosses two pool refills
    m.mc_dropout = False
    for i in range(8):
        assert not torch.allclose(outs[i], outs[i + 1])
    assert all(not d._queue for d in m.modules() if hasattr(d, "_queue"))  # dropped on exit
    s1 = s[:1].expand(400, 3)
    acts = a[:1, None].expand(400, 6, 2)

    def variance(pooled: bool) -> torch.Tensor:
        torch.manual_seed(1)
        masks = "step" if pooled else "trajectory"
        with torch.no_grad():
            return mc_uncertainty(m, s1, acts, n=50, masks=masks).var[:, 0].mean(0)

    torch.testing.assert_close(variance(True), variance(True))  # reproducible
    # step 0: per-step and per-trajectory masks are the same distribution
    ratio = variance(True) / variance(False)
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio


@pytest.mark.parametrize("kind", ["deterministic", "ensemble"])
def test_pooled_masks_multiply_in_place_only_without_autograd(kind: str) -> None:
    """Without autograd a pooled mask multiplies the ReLU's output in place: the same MC
    rollout, to the bit, as the layers that allocate the product; with autograd the
    product is a new tensor (the ReLU's backward needs its output)."""
    from worldplan.worldmodels.base import MCDropout
    from worldplan.worldmodels.ensemble import Ensemble

    torch.manual_seed(0)
    m = (DeterministicModel(3, 2, hidden=16, dropout=0.3) if kind == "deterministic"
         else Ensemble(3, 2, k=3, hidden=16, dropout=0.3)).eval()
    drops = [d for d in m.modules() if isinstance(d, MCDropout)]
    assert drops and all(d.inplace for d in drops)
    s, acts = torch.randn(4, 3), torch.randn(4, 5, 2)

    def run(inplace: bool) -> torch.Tensor:
        for d in drops:
            d.inplace = inplace
        torch.manual_seed(7)
        with torch.no_grad():
            return mc_uncertainty(m, s, acts, n=3).var

    assert torch.equal(run(False), run(True))
    x = torch.rand(6, 16)
    with m.pooled_masks(calls=2, layers=drops):
        drops[0].force = True
        with torch.no_grad():
            assert drops[0](x) is x  # in place
        y = torch.rand(6, 16, requires_grad=True).relu()
        assert drops[0](y) is not y
        drops[0].force = False


def test_training_optimiser_choice_and_the_fast_masks_on_vector_models_only() -> None:
    from worldplan.worldmodels.base import MCDropout
    from worldplan.worldmodels.ensemble import Ensemble
    from worldplan.worldmodels.images import ImageModel
    from worldplan.worldmodels.training import TrainConfig, clip_gradients, make_optimizer

    m = DeterministicModel(3, 2, hidden=16)
    assert make_optimizer(m.parameters(), 1e-3).defaults["foreach"]  # what results used
    assert not TrainConfig().fused_adam
    fused = make_optimizer(m.parameters(), 1e-3, fused=True).defaults
    assert fused["fused"] or fused["foreach"]  # fused where this build has the kernel
    opt = make_optimizer(m.parameters(), 1e-3, fused=True)
    for model in (m, Ensemble(3, 2, hidden=8), StochasticModel(3, 2, hidden=8)):
        assert all(d.fast for d in model.modules() if isinstance(d, MCDropout))
    image = ImageModel(3, 2, (3, 24, 24), hidden=16)
    assert not any(d.fast for d in image.modules() if isinstance(d, MCDropout))
    # one clipped step moves the weights; the returned norm is the norm before clipping
    batch = {"context": torch.randn(8, 1, 3), "actions": torch.randn(8, 1, 2),
             "targets": torch.randn(8, 1, 3)}
    params = list(m.parameters())
    before = [p.detach().clone() for p in params]
    m(batch)["loss"].backward()
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                 for p in params]))
    torch.testing.assert_close(clip_gradients(params, 1e-3), want)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_sfc64_masks_have_the_rate_are_fresh_and_follow_the_torch_seed() -> None:
    """The pooled masks' SFC64 words: the dropout rate and unit mean of the torch words,
    new values at every call, and the same values after reseeding torch's generator."""
    from worldplan.worldmodels.base import bernoulli_masks

    like = torch.zeros(1)
    torch.manual_seed(0)
    a = bernoulli_masks(200_001, 0.1, like, sfc64=True).clone()
    b = bernoulli_masks(200_001, 0.1, like, {}, sfc64=True).clone()
    torch.manual_seed(0)
    torch.testing.assert_close(bernoulli_masks(200_001, 0.1, like, sfc64=True), a)
    assert not torch.equal(a, b)
    for m in (a, b):
        assert abs(float((m == 0).float().mean()) - 0.1) < 0.005
        assert abs(float(m.mean()) - 1.0) < 0.01
        assert set(torch.unique(m).tolist()) == {0.0, float(m.max())}
    # neighbouring values are independent: P(both dropped) is p^2
    both = float(((a[1:] == 0) & (a[:-1] == 0)).float().mean())
    assert abs(both - 0.01) < 0.002


def test_mc_uncertainty_restores_every_dropout_switch() -> None:
    """mc_uncertainty forces dropout on and leaves each layer's switch, pool and frozen
    flags as it found them (also a layer switched on by hand)."""
    from worldplan.worldmodels.base import MCDropout

    m = DeterministicModel(3, 2, hidden=16, dropout=0.2).eval()
    layers = m.dropout_layers()
    assert len(layers) == len([d for d in m.modules() if isinstance(d, MCDropout)]) > 1
    layers[0].force = True
    s, acts = torch.randn(4, 3), torch.randn(4, 5, 2)
    for masks in ("step", "trajectory"):
        u = mc_uncertainty(m, s, acts, n=3, masks=masks)
        assert (u.var > 0).any()
        assert [d.force for d in layers] == [True] + [False] * (len(layers) - 1)
        assert not any(d.pooled or d.frozen or d._queue for d in layers)
