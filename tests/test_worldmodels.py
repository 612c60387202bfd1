"""Data sets, the deterministic model and training (issue 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldplan.checkpoint import CheckpointError
from worldplan.worldmodels import (
    DatasetError,
    DeterministicModel,
    NonFiniteLossError,
    TrainConfig,
    evaluate_horizon_error,
    load_dataset,
    load_model,
    train_model,
    write_dataset,
)
from worldplan.worldmodels.synthetic import toy_episodes

# timings and bit-exact comparisons on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy"
    return write_dataset(path, toy_episodes(), task="toy", dt=0.1, config={"T": 30}, seed=1,
                         episodes_per_shard=10)


# ------------------------------------------------------------------ data sets
def test_write_and_load_roundtrip(toy: Path) -> None:
    ds = load_dataset(toy)
    eps = toy_episodes()
    m = json.loads((toy / "manifest.json").read_text())
    assert m["count"]["episodes"] == 24 and m["count"]["transitions"] == 24 * 30
    assert len(m["shards"]) == 3
    assert sorted(ds.split_ids["train"] + ds.split_ids["val"] + ds.split_ids["test"]) == list(
        range(24))
    assert len(ds.split_ids["train"]) > len(ds.split_ids["val"]) > 0
    np.testing.assert_array_equal(ds.episode(13)["states"], eps[13]["states"])
    np.testing.assert_array_equal(ds.episode(13)["actions"], eps[13]["actions"])
    assert isinstance(ds.episode(0)["states"], np.memmap)
    train = np.concatenate([eps[i]["states"] for i in ds.split_ids["train"]])
    np.testing.assert_allclose(ds.stats.state_mean, train.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds.stats.state_std, train.std(0), rtol=1e-3)
    assert m["generator"] == {"config": {"T": 30}, "seed": 1}


def test_split_is_seeded_and_configurable(tmp_path: Path) -> None:
    eps = toy_episodes(n=20, T=5)
    a = write_dataset(tmp_path / "a", eps, task="t", dt=0.1, seed=5,
                      split={"train": 0.5, "val": 0.25, "test": 0.25})
    b = write_dataset(tmp_path / "b", eps, task="t", dt=0.1, seed=5,
                      split={"train": 0.5, "val": 0.25, "test": 0.25})
    c = write_dataset(tmp_path / "c", eps, task="t", dt=0.1, seed=6,
                      split={"train": 0.5, "val": 0.25, "test": 0.25})
    da, db, dc = load_dataset(a), load_dataset(b), load_dataset(c)
    assert da.split_ids == db.split_ids != dc.split_ids
    assert [len(da.split_ids[s]) for s in ("train", "val", "test")] == [10, 5, 5]
    with pytest.raises(ValueError, match="sum to 1"):
        write_dataset(tmp_path / "d", eps, task="t", dt=0.1, split={"train": 0.5})


def test_explicit_split_ids_and_episode_filter(tmp_path: Path) -> None:
    eps = toy_episodes(n=6, T=5)
    ds = load_dataset(write_dataset(tmp_path / "a", eps, task="t", dt=0.1,
                                    split_ids={"train": [0, 2, 4, 5], "val": [1], "test": [3]}))
    assert ds.split_ids == {"train": [0, 2, 4, 5], "val": [1], "test": [3]}
    train = np.concatenate([eps[i]["states"] for i in (0, 2, 4, 5)])
    np.testing.assert_allclose(ds.stats.state_mean, train.mean(0), rtol=1e-4, atol=1e-5)
    # windows of the train split restricted to episodes 2 and 3: only episode 2's
    w = ds.windows("train", ncond=2, npred=2, episodes=[2, 3])
    assert len(w) == 5 - 2 - 2 + 2
    np.testing.assert_allclose(w.get_batch([0])["context"][0].numpy(), eps[2]["states"][:2])
    with pytest.raises(ValueError, match="exactly once"):
        write_dataset(tmp_path / "b", eps, task="t", dt=0.1,
                      split_ids={"train": [0, 1, 2], "test": [2, 3, 4, 5]})
    with pytest.raises(ValueError, match="not both"):
        write_dataset(tmp_path / "c", eps, task="t", dt=0.1, split={"train": 1.0},
                      split_ids={"train": list(range(6))})


def test_windows_match_episodes(toy: Path) -> None:
    ds = load_dataset(toy)
    w = ds.windows("train", ncond=3, npred=4)
    assert len(w) == len(ds.split_ids["train"]) * (30 - 4 - 3 + 2)
    ctx, act, tgt = w[5]
    ep = ds.episode(ds.split_ids["train"][0])
    t = 5 + 2  # window 5 of the first train episode: last context state at t=7
    np.testing.assert_array_equal(ctx.numpy(), ep["states"][t - 2 : t + 1])
    np.testing.assert_array_equal(act.numpy(), ep["actions"][t : t + 4])
    np.testing.assert_array_equal(tgt.numpy(), ep["states"][t + 1 : t + 5])
    batch = w.get_batch([5, 0, len(w) - 1])
    assert batch["context"].shape == (3, 3, 3) and batch["actions"].shape == (3, 4, 2)
    torch.testing.assert_close(batch["context"][0], ctx)
    loader = torch.utils.data.DataLoader(w, batch_size=8)
    c, a, t_ = next(iter(loader))
    assert c.shape == (8, 3, 3) and a.shape == (8, 4, 2) and t_.shape == (8, 4, 3)


def test_images_roundtrip(tmp_path: Path) -> None:
    eps = toy_episodes(n=6, T=6, images=True)
    ds = load_dataset(write_dataset(tmp_path / "img", eps, task="t", dt=0.1))
    assert ds.image_shape == (1, 8, 8)
    batch = ds.windows("train", 2, 2).get_batch([0, 1])
    assert batch["context_images"].shape == (2, 2, 1, 8, 8)
    assert batch["context_images"].dtype == torch.uint8
    first = ds.split_ids["train"][0]
    np.testing.assert_array_equal(batch["target_images"][0].numpy(), eps[first]["images"][2:4])


def test_nan_in_shard_is_named(toy: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(toy, bad)
    arr = np.load(bad / "shard-00001-states.npy")
    arr[17, 2] = np.nan
    np.save(bad / "shard-00001-states.npy", arr)
    with pytest.raises(DatasetError, match=r"shard-00001-states\.npy.*index \[17, 2\]"):
        load_dataset(bad)
    arr[17, 2] = np.inf
    np.save(bad / "shard-00001-states.npy", arr[:-3])  # truncated too: shape is checked first
    with pytest.raises(DatasetError, match=r"shard-00001-states\.npy: expected shape"):
        load_dataset(bad)


def test_bad_manifest_names_file_and_field(toy: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(toy, bad)
    m = json.loads((bad / "manifest.json").read_text())
    del m["state_dim"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=r"manifest\.json: missing field 'state_dim'"):
        load_dataset(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"manifest\.json is not valid JSON"):
        load_dataset(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nowhere")


def test_writer_rejects_bad_episodes(tmp_path: Path) -> None:
    eps = toy_episodes(n=3, T=4)
    eps[1]["actions"] = eps[1]["actions"][:-1]
    with pytest.raises(ValueError, match=r"episodes\[1\].*one more row"):
        write_dataset(tmp_path / "x", eps, task="t", dt=0.1)
    eps = toy_episodes(n=3, T=4)
    eps[2]["states"][1, 0] = np.nan
    with pytest.raises(ValueError, match=r"episodes\[2\]\.states contains NaN"):
        write_dataset(tmp_path / "x", eps, task="t", dt=0.1)
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.*"))  # no half-written folder left behind


def test_overwrite_is_atomic(toy: Path, tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "d", toy_episodes(n=4, T=4), task="t", dt=0.1)
    with pytest.raises(FileExistsError):
        write_dataset(path, toy_episodes(n=4, T=4), task="t", dt=0.1)
    write_dataset(path, toy_episodes(n=5, T=4), task="t2", dt=0.1, overwrite=True)
    assert load_dataset(path).task == "t2" and load_dataset(path).num_episodes == 5


# ------------------------------------------------------------------ deterministic model
def test_step_rollout_shapes_and_raw_units() -> None:
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, ncond=2, hidden=16).eval()
    ctx = torch.randn(5, 2, 3)
    acts = torch.randn(5, 7, 2, requires_grad=True)
    out = m.rollout(ctx, acts)
    assert out.shape == (5, 7, 3)
    out.sum().backward()
    assert acts.grad is not None and acts.grad.abs().sum() > 0
    torch.testing.assert_close(out[:, 0], m.step(ctx, acts[:, 0]))
    with pytest.raises(ValueError, match=r"state must have shape \[B, 2, 3\]"):
        m.step(torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"action must have shape \[5, 2\]"):
        m.step(ctx, torch.randn(5, 3))
    m1 = DeterministicModel(3, 2).eval()
    s = torch.randn(4, 3, requires_grad=True)
    m1.step(s, torch.randn(4, 2)).sum().backward()
    assert s.grad is not None


def test_mc_dropout_switch() -> None:
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, dropout=0.3).eval()
    s, a = torch.randn(8, 3), torch.randn(8, 2)
    torch.testing.assert_close(m.step(s, a), m.step(s, a))
    m.mc_dropout = True
    assert m.mc_dropout
    assert not torch.allclose(m.step(s, a), m.step(s, a))
    m.mc_dropout = False
    torch.testing.assert_close(m.step(s, a), m.step(s, a))


def test_checkpoint_roundtrip_keeps_normaliser(toy: Path, tmp_path: Path) -> None:
    from worldplan.checkpoint import save_checkpoint

    ds = load_dataset(toy)
    m = DeterministicModel(3, 2, ncond=2, hidden=16).eval()
    m.set_normalizer(ds.stats)
    save_checkpoint(tmp_path / "m.pt", m.to_checkpoint())
    m2 = load_model(tmp_path / "m.pt")
    assert isinstance(m2, DeterministicModel) and m2.config() == m.config()
    ctx, a = torch.randn(4, 2, 3), torch.randn(4, 2)
    torch.testing.assert_close(m2.step(ctx, a), m.step(ctx, a))
    np.testing.assert_allclose(m2.state_mean.numpy(), ds.stats.state_mean)


def test_corrupt_checkpoint_names_path(tmp_path: Path) -> None:
    from worldplan.checkpoint import save_checkpoint

    m = DeterministicModel(3, 2)
    path = save_checkpoint(tmp_path / "m.pt", m.to_checkpoint())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)


# ------------------------------------------------------------------ training
def test_training_learns_and_checkpoints(toy: Path, tmp_path: Path) -> None:
    ds = load_dataset(toy)
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, ncond=1, hidden=64, dropout=0.0)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=3e-3, npred=2, seed=0)
    hist = train_model(m, ds, cfg, checkpoint_dir=tmp_path / "ck", progress=False)
    assert hist["val_loss"][-1] < min(0.1, 0.5 * hist["val_loss"][0])
    assert (tmp_path / "ck" / "last.pt").is_file() and (tmp_path / "ck" / "best.pt").is_file()
    best = load_model(tmp_path / "ck" / "best.pt")
    err = evaluate_horizon_error(best, ds, "test", horizon=5)
    assert err.shape == (5,) and np.all(np.diff(err) > 0) and err[0] < 0.05
    # ~0.1 per step of true motion: the learned model must be far better than "no change"
    still = np.sqrt(np.mean((ds.episode(ds.split_ids["test"][0])["states"][1:]
                             - ds.episode(ds.split_ids["test"][0])["states"][:-1]) ** 2))
    assert err[0] < 0.3 * still


def test_resume_is_bit_for_bit(toy: Path, tmp_path: Path) -> None:
    ds = load_dataset(toy)
    cfg = TrainConfig(epochs=3, batch_size=32, npred=2, seed=4)

    def fresh() -> DeterministicModel:
        torch.manual_seed(11)
        return DeterministicModel(3, 2, ncond=2, hidden=32, dropout=0.1)

    full = train_model(fresh(), ds, cfg, checkpoint_dir=tmp_path / "full", progress=False)
    half = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    train_model(fresh(), ds, half, checkpoint_dir=tmp_path / "part", progress=False)
    torch.manual_seed(999)  # the caller's global RNG must not matter on resume
    resumed = train_model(fresh(), ds, cfg, checkpoint_dir=tmp_path / "part", resume=True,
                          progress=False)
    assert resumed["step_loss"] == full["step_loss"]
    assert resumed["val_loss"] == full["val_loss"]
    a = load_model(tmp_path / "full" / "last.pt").state_dict()
    b = load_model(tmp_path / "part" / "last.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dims_disagreement_names_both_shapes(toy: Path) -> None:
    ds = load_dataset(toy)
    with pytest.raises(ValueError, match=r"expects states \[B, 4\].*holds states \[T\+1, 3\]"):
        train_model(DeterministicModel(4, 2), ds, TrainConfig(epochs=1), progress=False)


def test_nonfinite_guard_stops_with_clear_error(toy: Path) -> None:
    ds = load_dataset(toy)
    m = DeterministicModel(3, 2, hidden=8)
    with torch.no_grad():
        m.decoder[-1][-1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="3 consecutive batches"):
        train_model(m, ds, TrainConfig(epochs=1, max_nonfinite=3), progress=False)


def test_nonfinite_guard_skips_and_counts(toy: Path, monkeypatch) -> None:
    ds = load_dataset(toy)
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, hidden=8)
    original = DeterministicModel.forward
    calls = {"n": 0}

    def sometimes_nan(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        if calls["n"] in (2, 5) and self.training:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DeterministicModel, "forward", sometimes_nan)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    hist = train_model(m, ds, TrainConfig(epochs=1, max_nonfinite=3), progress=False)
    assert hist["skipped"] == 2
    assert all(np.isfinite(v).all() for v in [p.detach().numpy() for p in m.parameters()])
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())


# ------------------------------------------------------------------ other models
def test_image_model_trains_and_rolls_out(tmp_path: Path) -> None:
    from worldplan.worldmodels.images import ImageModel
    from worldplan.worldmodels.uncertainty import mc_uncertainty

    ds = load_dataset(write_dataset(tmp_path / "img", toy_episodes(n=6, T=8, images=True),
                                    task="t", dt=0.1))
    torch.manual_seed(0)
    m = ImageModel(3, 2, (1, 8, 8), ncond=2, hidden=32, channels=(4, 8), z_dim=2)
    hist = train_model(m, ds, TrainConfig(epochs=2, batch_size=16, npred=2),
                       checkpoint_dir=tmp_path / "ck", progress=False)
    assert np.isfinite(hist["train_loss"]).all()
    m2 = load_model(tmp_path / "ck" / "last.pt")
    assert isinstance(m2, ImageModel) and m2.image_shape == (1, 8, 8)
    batch = ds.windows("test", 2, 3).get_batch([0, 1])
    ms = m2.reset(batch["context"], batch["context_images"])
    traj = m2.unroll(ms, batch["actions"])
    states, frames = traj.states, traj.images
    assert states.shape == (2, 3, 3) and frames.shape == (2, 3, 1, 8, 8)
    assert frames.min() >= 0 and frames.max() <= 1
    one = m2.advance(ms, batch["actions"][:, 0], z=torch.zeros(2, 2))
    assert one.state.shape == (2, 3) and one.image.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="needs frames"):
        m2.reset(batch["context"])
    with pytest.raises(ValueError, match=r"frames must have shape \[2, 2, 1, 8, 8\]"):
        m2.reset(batch["context"], torch.zeros(2, 2, 3, 8, 8))
    # one way to step an image model: the vector models' tensor calls name the contract
    with pytest.raises(TypeError, match=r"model.advance\(model.reset\(context, frames\)"):
        m2.step(batch["context"], batch["actions"][:, 0])
    with pytest.raises(TypeError, match=r"model.unroll\(model.reset\(context, frames\)"):
        m2.rollout(batch["context"], batch["actions"])
    u = mc_uncertainty(m2, m2.reset(batch["context"], batch["context_images"]),
                       batch["actions"], n=4)
    assert u.image_var.shape == (2, 3, 1, 8, 8) and u.total(m2).shape == (2, 3)
    assert m2.preview(batch).shape == (3, 16, 16)
    err = evaluate_horizon_error(m2, ds, "test", horizon=3)
    assert err.shape == (3,) and np.isfinite(err).all()
    with pytest.raises(ValueError, match=r"expects images \[3, 8, 8\].*holds \[1, 8, 8\]"):
        train_model(ImageModel(3, 2, (3, 8, 8), channels=(4,)), ds, TrainConfig(epochs=1),
                    progress=False)


def test_ensemble_checkpoint_and_disagreement(toy: Path, tmp_path: Path) -> None:
    from worldplan.worldmodels.ensemble import Ensemble

    ds = load_dataset(toy)
    torch.manual_seed(0)
    ens = Ensemble(3, 2, k=3, hidden=16)
    train_model(ens, ds, TrainConfig(epochs=1), checkpoint_dir=tmp_path, progress=False)
    again = load_model(tmp_path / "last.pt")
    assert isinstance(again, Ensemble) and again.k == 3
    ctx, acts = torch.randn(4, 1, 3), torch.randn(4, 5, 2)
    members = again.rollout_members(ctx, acts)
    assert members.shape == (3, 4, 5, 3)
    # rollout steps the members' mean state; its first step is the mean of the members'
    torch.testing.assert_close(again.rollout(ctx, acts)[:, 0], members[:, :, 0].mean(0))
    assert (again.disagreement(ctx, acts) > 0).all()
    np.testing.assert_allclose(again.state_mean.numpy(), ds.stats.state_mean)
    # members differ (independent initialisations) and each is a working model
    assert members.var(0).mean() > 0
    with pytest.raises(ValueError, match=r"k \(ensemble size\) must be"):
        Ensemble(3, 2, k=1)


def test_train_stochastic_two_phases_and_resume(toy: Path, tmp_path: Path) -> None:
    from worldplan.worldmodels.stochastic import StochasticModel
    from worldplan.worldmodels.training import train_stochastic

    ds = load_dataset(toy)
    torch.manual_seed(0)
    det = DeterministicModel(3, 2, hidden=16)
    cfg = TrainConfig(epochs=1)
    sto, hist = train_stochastic(det, ds, cfg, cfg, checkpoint_dir=tmp_path, z_dim=2,
                                 z_dropout="prior", progress=False)
    assert isinstance(sto, StochasticModel) and sto.z_dropout == "prior"
    assert set(hist) == {"deterministic", "stochastic"}
    assert hist["stochastic"]["steps"] > 0
    assert (tmp_path / "deterministic" / "best.pt").exists()
    assert (tmp_path / "stochastic" / "best.pt").exists()
    # resuming a finished schedule with more stochastic epochs continues phase 2 only
    torch.manual_seed(0)
    det2 = DeterministicModel(3, 2, hidden=16)
    _, hist2 = train_stochastic(det2, ds, cfg, TrainConfig(epochs=2), checkpoint_dir=tmp_path,
                                z_dim=2, z_dropout="prior", resume=True, progress=False)
    assert hist2["deterministic"]["steps"] == hist["deterministic"]["steps"]
    assert len(hist2["stochastic"]["train_loss"]) == 2
    assert hist2["stochastic"]["train_loss"][0] == hist["stochastic"]["train_loss"][0]


def test_tensorboard_scalars_and_prediction_figures(toy: Path, tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    ds = load_dataset(toy)
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    train_model(DeterministicModel(3, 2, hidden=8), ds, TrainConfig(epochs=2, log_every=5),
                writer=writer, progress=False, tag="emu")
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"emu/train_loss", "emu/val_loss", "emu/train_step_loss"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("emu/val_loss")) == 2
    assert "emu/prediction_vs_target" in acc.Tags()["images"]


def test_trained_model_keeps_its_normaliser_when_fine_tuned(toy: Path, tmp_path: Path) -> None:
    ds = load_dataset(toy)
    other = load_dataset(write_dataset(tmp_path / "o", toy_episodes(n=8, T=10, seed=9),
                                       task="toy", dt=0.1))
    m = DeterministicModel(3, 2, hidden=8)
    train_model(m, ds, TrainConfig(epochs=1), progress=False)
    np.testing.assert_allclose(m.state_mean.numpy(), ds.stats.state_mean)
    train_model(m, other, TrainConfig(epochs=1), progress=False)
    np.testing.assert_allclose(m.state_mean.numpy(), ds.stats.state_mean)


def test_image_model_two_phase_warm_start(tmp_path: Path) -> None:
    from worldplan.worldmodels.images import ImageModel
    from worldplan.worldmodels.training import train_stochastic

    ds = load_dataset(write_dataset(tmp_path / "img", toy_episodes(n=6, T=8, images=True),
                                    task="t", dt=0.1))
    torch.manual_seed(0)
    det = ImageModel(3, 2, (1, 8, 8), ncond=2, hidden=16, channels=(4,))
    batch = ds.windows("test", 2, 1).get_batch([0, 1])
    cfg = TrainConfig(epochs=1, batch_size=16)
    train_model(det, ds, cfg, progress=False)
    warm = ImageModel.from_deterministic(det, z_dim=2, p_z=0.5, z_dropout="prior").eval()
    det.eval()
    a0, z0 = batch["actions"][:, 0], torch.randn(2, 2)
    start = det.reset(batch["context"], batch["context_images"])
    x, y = warm.advance(start, a0, z=z0), det.advance(start, a0)
    torch.testing.assert_close(x.context, y.context)
    torch.testing.assert_close(x.frames, y.frames)
    sto, hist = train_stochastic(det, ds, TrainConfig(epochs=0), cfg, z_dim=2, progress=False)
    assert isinstance(sto, ImageModel) and sto.z_dim == 2 and hist["stochastic"]["steps"] > 0
    with pytest.raises(TypeError, match="z_dim=0"):
        ImageModel.from_deterministic(sto)


def test_custom_image_key_and_impossible_windows(tmp_path: Path) -> None:
    eps = toy_episodes(n=4, T=5, images=True)
    for ep in eps:
        ep["frames"] = ep.pop("images")
    ds = load_dataset(write_dataset(tmp_path / "f", eps, task="t", dt=0.1, image_key="frames"))
    assert ds.image_shape == (1, 8, 8)
    np.testing.assert_array_equal(ds.episode(0)["images"], eps[0]["frames"])
    with pytest.raises(ValueError, match=r"no window of ncond=5 \+ npred=3"):
        ds.windows("train", 5, 3)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        ds.windows("training", 1, 1)
    with pytest.raises(ValueError, match="ncond must be an int >= 1"):
        ds.windows("train", 0, 1)
    with pytest.raises(ValueError, match="dt must be a positive number"):
        write_dataset(tmp_path / "g", eps, task="t", dt=0.0, image_key="frames")


def test_training_without_a_validation_split_says_so(tmp_path: Path, caplog) -> None:
    """No val windows: the epoch line says there is no validation split (not "val nan")
    and best.pt follows the training loss."""
    eps = toy_episodes(n=8, T=10)
    path = write_dataset(tmp_path / "noval", eps, task="toy", dt=0.1, seed=0,
                         split={"train": 1.0, "val": 0.0, "test": 0.0})
    torch.manual_seed(0)
    m = DeterministicModel(3, 2, ncond=1, hidden=16, dropout=0.0)
    with caplog.at_level("INFO", logger="worldplan.worldmodels.training"):
        hist = train_model(m, load_dataset(path), TrainConfig(epochs=2, batch_size=16, seed=0),
                           checkpoint_dir=tmp_path / "ck", progress=False)
    epochs = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(epochs) == 2 and all("no validation split" in e for e in epochs)
    assert not any("nan" in e for e in epochs)
    assert np.isfinite(hist["best_val"]) and (tmp_path / "ck" / "best.pt").is_file()
