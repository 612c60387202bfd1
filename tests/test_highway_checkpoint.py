"""The highway's policies in the one policy checkpoint format: a round trip, and one-line
refusals (before any work) of a checkpoint of another configuration or the older format."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from worldplan.checkpoint import CheckpointError, save_checkpoint
from worldplan.envs.highway import View
from worldplan.experiments import highway as hw
from worldplan.experiments import highway_config, highway_policy, highway_shared
from worldplan.experiments.runs import Run
from worldplan.planners.policy.checkpoint import read_policy, save_policy
from worldplan.worldmodels.dataset import load_dataset, write_dataset


@pytest.fixture
def run(tmp_path) -> Run:
    """A run holding a tiny highway data set (10 episodes of 8 steps, no models)."""
    run = Run.create(tmp_path / "run", "highway")
    rng = np.random.default_rng(0)
    eps = [{"states": rng.normal(size=(8, 4)).astype(np.float32),
            "actions": rng.normal(size=(7, 2)).astype(np.float32),
            "images": rng.integers(0, 255, (8, 3, 117, 24), dtype=np.uint8)}
           for _ in range(10)]
    meta = {"car_ids": list(range(10)), "start_steps": [0] * 10,
            "recording": "recording.npz", "view": dataclasses.asdict(View())}
    write_dataset(run.data / "dataset", eps, task="highway", dt=0.1, config=meta)
    return run


def _save(config: hw.HighwayConfig, run: Run, method: str, seed: int = 0) -> torch.nn.Module:
    """What train-policy saves for ``method`` under ``config`` (untrained weights)."""
    ds = load_dataset(run.data / "dataset")
    torch.manual_seed(seed)
    policy = highway_shared.new_policy(config, ds, highway_config.policy_ncond(config))
    save_policy(highway_shared.policy_path(run, method, seed), policy, "highway",
                highway_shared.policy_meta(config, method, seed))
    return policy


def test_round_trip_rebuilds_the_same_policy(run) -> None:
    cfg = hw.quick_config()
    cfg.policy.ncond, cfg.policy.relative_motion = 3, True
    saved = _save(cfg, run, "mpur")
    payload = read_policy(highway_shared.policy_path(run, "mpur", 0), "highway")
    assert payload["kind"] == "policy" and payload["class"] == "ContextPolicy"
    assert payload["meta"] == {"method": "mpur", "seed": 0, "world_model": "stochastic",
                               "ego_motion": True}
    ds = load_dataset(run.data / "dataset")
    loaded = highway_shared.load_highway_policy(cfg, run, "mpur", 0, ds, torch.device("cpu"), 3)
    states, frames = torch.randn(5, 3, 4), torch.rand(5, 3, 3, 117, 24)
    torch.testing.assert_close(loaded(states, frames), saved.eval()(states, frames))
    # the normalisation statistics come back with the weights, not from the builder
    torch.testing.assert_close(loaded.state_std, torch.as_tensor(ds.stats.state_std,
                                                                 dtype=torch.float32))


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.policy, "ncond", 4), r"ncond 2 \(expected 4\)"),
    (lambda c: setattr(c.policy, "channels", (8, 16)),
     r"channels \[8, 8, 16\] \(expected \[8, 16\]\)"),
    (lambda c: setattr(c.model, "ego_motion", False), r"ego_motion True \(expected False\)"),
])
def test_evaluate_refuses_a_policy_of_another_configuration(run, change, message) -> None:
    cfg = hw.quick_config()
    _save(cfg, run, "svg")
    change(cfg)
    cfg.evaluate.methods = ("svg",)
    before = sorted(p.name for p in run.path.rglob("*"))
    with pytest.raises(CheckpointError, match=message) as info:
        hw.evaluate_stage(cfg, run)
    assert "\n" not in str(info.value) and "policy-svg-seed0.pt" in str(info.value)
    assert sorted(p.name for p in run.path.rglob("*")) == before  # nothing written


def test_imitation_does_not_depend_on_the_world_model_mode(run) -> None:
    cfg = hw.quick_config()
    _save(cfg, run, "imitation")
    cfg.model.ego_motion = False
    ds = load_dataset(run.data / "dataset")
    highway_shared.check_policy_file(cfg, run, "imitation", 0, ds, 2)  # no error


def test_train_policy_checks_its_start_policy_before_training(run, monkeypatch) -> None:
    cfg = hw.quick_config()
    _save(cfg, run, "imitation")
    cfg.policy.methods, cfg.policy.ncond = ("oracle",), 3
    monkeypatch.setattr(highway_policy, "train_mpur", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(CheckpointError, match=r"policy-imitation-seed0.pt was trained with "
                                              r"another configuration: ncond 2 \(expected 3\)"):
        hw.train_policy_stage(cfg, run)
    cfg.policy.init_from = "mpur"  # named but absent: refused before any training too
    with pytest.raises(ValueError, match="init_from 'mpur': no such policy of seed 0"):
        hw.train_policy_stage(cfg, run)


def test_a_checkpoint_written_before_the_network_moved_to_the_task_loads(run) -> None:
    """A policy checkpoint names its network by the bare class name ``"ContextPolicy"``
    (never a module path), as it did while the class lived in planners/policy: such a
    payload, written by hand with the keys that module's network had, loads and acts."""
    cfg = hw.quick_config()
    ds = load_dataset(run.data / "dataset")
    torch.manual_seed(3)
    net = highway_shared.new_policy(cfg, ds, 2)
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert sorted(weights) == [  # the parameters and buffers of the network as saved then
        "action_mean", "action_std", "conv.0.bias", "conv.0.weight", "conv.2.bias",
        "conv.2.weight", "conv.4.bias", "conv.4.weight", "head.1.bias", "head.1.weight",
        "head.3.bias", "head.3.weight", "image_fc.bias", "image_fc.weight", "state_fc.bias",
        "state_fc.weight", "state_mean", "state_std"]
    save_checkpoint(highway_shared.policy_path(run, "svg", 0), {
        "kind": "policy", "task": "highway", "class": "ContextPolicy",
        "config": net.config(), "state_dict": weights,
        "meta": highway_shared.policy_meta(cfg, "svg", 0)})
    loaded = highway_shared.load_highway_policy(cfg, run, "svg", 0, ds, torch.device("cpu"), 2)
    assert type(loaded).__module__ == "worldplan.experiments.highway_policy_net"
    states, frames = torch.randn(4, 2, 4), torch.rand(4, 2, 3, 117, 24)
    torch.testing.assert_close(loaded(states, frames), net.eval()(states, frames))
