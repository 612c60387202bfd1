"""The highway data pipeline (tracking, smoothing, episodes), the policy learners, and the
experiment's bad-input errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from worldplan.checkpoint import CheckpointError, save_checkpoint
from worldplan.envs.highway import (
    Recording,
    View,
    actions_from_states,
    record_traffic,
    step_state_torch,
)
from worldplan.envs.highway.episodes import build_episodes
from worldplan.experiments.highway import (
    HighwayConfig,
    evaluate_stage,
    extraction_errors,
    quick_config,
    smooth_tracks,
    tracker_noise,
    train_policy_stage,
)
from worldplan.experiments.highway_policy_net import ContextPolicy
from worldplan.experiments.runs import Run
from worldplan.planners.policy.checkpoint import save_policy
from worldplan.planners.policy.imitation import ImitationConfig, train_imitation
from worldplan.planners.policy.mpur import MPURConfig, UncertaintyStats, train_mpur
from worldplan.worldmodels.dataset import write_dataset


@pytest.fixture(scope="module")
def recording() -> Recording:
    return record_traffic(steps=650, warmup=250, seed=5, progress=False)


def test_rts_smoothing_makes_actions_recoverable(recording: Recording) -> None:
    r = recording
    rng = np.random.default_rng(0)
    sigma = (0.3, 0.15)
    det = tracker_noise(r.pos, r.valid, sigma, rng)
    assert np.isnan(det[~r.valid]).all()
    pos, vel = smooth_tracks(det, r.valid, r.dt, (0.5, 0.005), sigma)
    cars = r.complete_cars()[:10]
    spans = [r.span(c) for c in cars]
    m = min(b - a + 1 for a, b in spans)
    truth = np.stack([r.pos[a:a + m, c] for c, (a, _) in zip(cars, spans, strict=True)])
    raw = np.stack([det[a:a + m, c] for c, (a, _) in zip(cars, spans, strict=True)])
    smooth = np.stack([pos[a:a + m, c] for c, (a, _) in zip(cars, spans, strict=True)])
    e_raw, e_smooth = extraction_errors(truth, raw, r.dt), extraction_errors(truth, smooth, r.dt)
    # raw detections differentiated twice: noise / dt^2 swamps the signal
    assert e_raw["accel_rmse"] > 10 * e_raw["accel_true_std"]
    assert e_smooth["accel_rmse"] < 0.02 * e_raw["accel_rmse"]
    assert e_smooth["accel_rmse"] < e_smooth["accel_true_std"]
    assert e_smooth["steer_rmse"] < 0.01 * e_raw["steer_rmse"]
    # the smoothed tracks stay on the true ones to well within the noise
    err = np.abs(smooth - truth).reshape(-1, 2).mean(0)
    assert err[0] < 0.5 * sigma[0] and err[1] < 0.5 * sigma[1]


def test_episodes_line_up_states_actions_images_costs(recording: Recording) -> None:
    r = recording
    cars = r.complete_cars()[:3]
    eps = build_episodes(r.pos, r.heading, r.valid, r.size, cars, r.road, r.dt, View(),
                         progress=False)
    for ep, car in zip(eps, cars, strict=True):
        t = len(ep["actions"])
        assert ep["states"].shape == (t + 1, 4) and ep["images"].shape == (t + 1, 3, 117, 24)
        assert ep["images"].dtype == np.uint8 and ep["costs"].shape == (t,)
        a, b = r.span(car)
        assert ep["start"] == a and t + 2 == b - a + 1
        # the ego is in the middle of its own images, the actions replay the states
        assert (ep["images"][:, 2, 58, 12] == 255).all()
        np.testing.assert_allclose(actions_from_states(ep["states"].astype(np.float64)),
                                   ep["actions"], atol=1e-3)
        nxt = step_state_torch(torch.as_tensor(ep["states"][:-1], dtype=torch.float64),
                               torch.as_tensor(ep["actions"], dtype=torch.float64), 1e-3)
        # (to float32 rounding; steering is unobservable below 5 cm/s and reads 0 there)
        np.testing.assert_allclose(nxt.numpy(), ep["states"][1:], atol=5e-3)
        assert ep["collision"].max() < 0.25  # the recorded drivers do not crash


def test_counterfactual_drives_replay_and_perturb(recording: Recording) -> None:
    from worldplan.envs.highway.counterfactual import DriveNoise, counterfactual_drives
    from worldplan.envs.highway.kinematics import step_np

    r = recording
    cars = r.complete_cars()[:6]
    # without noise a drive is the recorded car itself among the recorded traffic
    exact = counterfactual_drives(r, cars, 1, 40, np.random.default_rng(0),
                                  DriveNoise(0.0, 0.0), progress=False)
    assert len(exact) == len(cars)
    for d in exact:
        t = len(d["actions"])
        span = slice(d["start"], d["start"] + t + 1)
        np.testing.assert_allclose(d["states"][:, :2], r.pos[span, d["car"]], atol=1e-3)
        assert d["images"].shape == (t + 1, 3, 117, 24) and d["costs"].shape == (t,)
        assert d["outcome"] in ("timeout", "success")
    # with noise: the applied actions are the recorded ones plus the perturbation, and
    # the states follow the kinematic update from them
    noisy = counterfactual_drives(r, cars, 4, 60, np.random.default_rng(1),
                                  DriveNoise(1.0, 0.003, 1.0), progress=False)
    dev = np.concatenate([d["actions"][:, 0] - r.action[d["start"]:d["start"]
                                                         + len(d["actions"]), d["car"], 0]
                          for d in noisy])
    assert 0.6 < dev.std() < 1.4
    d = max(noisy, key=lambda e: len(e["actions"]))
    heading = d["states"][:-1, 2:] / np.linalg.norm(d["states"][:-1, 2:], axis=1, keepdims=True)
    pos, _, speed = step_np(d["states"][:-1, :2].astype(np.float64), heading,
                            np.linalg.norm(d["states"][:-1, 2:], axis=1), d["actions"],
                            np.full(len(d["actions"]), r.size[d["car"], 0]))
    np.testing.assert_allclose(pos, d["states"][1:, :2], atol=1e-3)
    assert max(np.abs(e["states"][-1, 0] - r.pos[e["start"] + len(e["actions"]), e["car"], 0])
               for e in noisy) > 0.5  # the drives leave their recorded paths
    with pytest.raises(ValueError, match="per_car"):
        counterfactual_drives(r, cars, 0, 10, np.random.default_rng(0))


def _policy() -> ContextPolicy:
    return ContextPolicy(4, 2, (3, 117, 24), 2, np.zeros(4), np.ones(4), np.zeros(2),
                         np.array([1.0, 0.01]), hidden=16, channels=(4, 4))


def _batches(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    ctx = torch.randn(n, 2, 4, generator=g)
    return {"context": ctx, "context_images": torch.rand(n, 2, 3, 117, 24, generator=g),
            "actions": torch.stack([ctx[:, -1, 0:1].repeat(1, 3), 0.01 * ctx[:, -1, 1:2]
                                    .repeat(1, 3)], -1),
            "targets": torch.randn(n, 3, 4, generator=g),
            "target_images": torch.rand(n, 3, 3, 117, 24, generator=g)}


def test_policy_bounds_and_imitation_learns() -> None:
    torch.manual_seed(0)
    pol = _policy()
    out = pol(torch.randn(5, 2, 4) * 100, torch.rand(5, 2, 3, 117, 24))
    assert out.shape == (5, 2)
    assert (out[:, 0].abs() <= 3.0 + 1e-5).all() and (out[:, 1].abs() <= 0.03 + 1e-7).all()
    with pytest.raises(ValueError, match="frames"):
        pol(torch.randn(5, 2, 4), torch.rand(5, 3, 117, 24))
    losses = train_imitation(pol, _batches, ImitationConfig(steps=50, batch_size=16, lr=3e-3),
                             np.random.default_rng(0), progress=False)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


class _ToyModel(torch.nn.Module):
    """next speed = speed + action; frame: an obstacle whose brightness grows with speed."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def advance(self, ms, action, z=None):
        # the model-state contract the learners drive (worldmodels/contract.py)
        s = ms.state.clone()
        s = torch.cat([s[:, :2], s[:, 2:3] + self.w * action[:, :1], s[:, 3:]], 1)
        img = torch.zeros_like(ms.image)
        img[:, 1, 40:50, 10:14] = torch.sigmoid(s[:, 2:3, None] - 2.0)
        return ms.then(s, img)


def test_bptt_learner_lowers_the_predicted_cost_and_needs_uncertainty_for_lam() -> None:
    torch.manual_seed(1)
    pol = _policy()

    def cost(images, states):
        return images[:, 1].flatten(1).amax(1)

    cfg = MPURConfig(steps=40, batch_size=16, horizon=3, lr=3e-3, lam=0.0)
    hist = train_mpur(pol, _ToyModel(), _batches, cost, cfg, np.random.default_rng(0),
                      lambda b, t: None, progress=False)
    assert np.mean(hist["cost"][-5:]) < np.mean(hist["cost"][:5])
    with pytest.raises(ValueError, match="uncertainty"):
        train_mpur(pol, _ToyModel(), _batches, cost, dataclasses.replace(cfg, lam=0.5),
                   np.random.default_rng(0), lambda b, t: None, progress=False)
    stats = UncertaintyStats(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    np.testing.assert_allclose(stats.hinge(torch.tensor([[0.5, 4.0]])).numpy(), [[0.0, 2.0]])


# -- bad input ---------------------------------------------------------------------------
def _run(tmp_path, task_of_data: str = "highway", images: bool = True) -> Run:
    run = Run.create(tmp_path / "run", "highway")
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(10):
        ep = {"states": rng.normal(size=(8, 4)).astype(np.float32),
              "actions": rng.normal(size=(7, 2)).astype(np.float32)}
        if images:
            ep["images"] = rng.integers(0, 255, (8, 3, 117, 24), dtype=np.uint8)
        eps.append(ep)
    meta = {"car_ids": list(range(10)), "start_steps": [0] * 10, "recording": "recording.npz",
            "view": dataclasses.asdict(View())}
    write_dataset(run.data / "dataset", eps, task=task_of_data, dt=0.1, config=meta)
    return run


def test_unknown_method_fails_before_any_work(tmp_path) -> None:
    run = Run.create(tmp_path / "empty", "highway")  # no data set at all
    cfg = quick_config()
    cfg.evaluate.methods = ("mpur", "teleport")
    with pytest.raises(ValueError, match="teleport"):
        evaluate_stage(cfg, run)
    cfg.policy.methods = ("dagger",)
    with pytest.raises(ValueError, match="dagger"):
        train_policy_stage(cfg, run)


def test_dataset_of_another_task_is_rejected(tmp_path) -> None:
    run = _run(tmp_path, task_of_data="truck", images=False)
    with pytest.raises(ValueError, match="truck"):
        train_policy_stage(quick_config(), run)


def test_missing_or_mismatched_checkpoints_are_rejected(tmp_path) -> None:
    run = _run(tmp_path)
    cfg: HighwayConfig = quick_config()
    with pytest.raises(CheckpointError, match="world model not found"):
        train_policy_stage(cfg, run)
    cfg.evaluate.methods = ("imitation",)
    with pytest.raises(CheckpointError, match=r"policy .imitation. \(seed 0\) not found"):
        evaluate_stage(cfg, run)
    # the format before planners/policy/checkpoint.py: named, not half-read
    wrong = ContextPolicy(4, 2, (4, 117, 24), 2, np.zeros(4), np.ones(4), np.zeros(2),
                          np.ones(2))
    save_checkpoint(run.checkpoints / "policy-imitation-seed0.pt",
                    {"kind": "highway-policy", "config": wrong.config(),
                     "state_dict": wrong.state_dict(),
                     "stats": {"state_mean": [0.0] * 4, "state_std": [1.0] * 4,
                               "action_mean": [0.0] * 2, "action_std": [1.0] * 2}})
    with pytest.raises(CheckpointError, match="older format"):
        evaluate_stage(cfg, run)
    save_policy(run.checkpoints / "policy-imitation-seed0.pt", wrong, "highway",
                {"method": "imitation", "seed": 0, "world_model": None})
    with pytest.raises(CheckpointError, match=r"image_shape \[4, 117, 24\] \(expected \[3, 117"):
        evaluate_stage(cfg, run)
    (run.checkpoints / "policy-imitation-seed0.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="corrupt"):
        evaluate_stage(cfg, run)


def test_quick_preset_runs_the_whole_pipeline(tmp_path) -> None:
    """`worldplan highway all --preset quick` end to end (about 1 min)."""
    import json

    from worldplan.experiments.cli import run_cli

    run_dir = tmp_path / "hw"
    assert run_cli(["highway", "all", "--preset", "quick", "--run", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ev = metrics["evaluate"]
    assert set(ev) == {"no-action", "expert-replay", "idm", "oracle", "imitation",
                       "vg", "svg", "mpur", "mper"}
    for m in ev.values():
        assert {"success_rate", "success_ci95", "success_no_rear", "mean_distance_m",
                "collision_front", "collision_rear", "collision_side",
                "mean_uncertainty"} <= set(m)
        lo, hi = m["success_ci95"]
        assert lo <= m["success_rate"] <= hi
    assert ev["expert-replay"]["success_rate"] == 1.0  # the recorded drivers get through
    assert ev["no-action"]["success_rate"] <= 0.3  # dense enough that doing nothing fails
    # held-out cars from the training recording's test split and a fresh recording
    assert ev["no-action"]["episodes"] == 4 + 6
    # the privileged driver (true replayed traffic) is the ceiling of the harness
    assert ev["idm"]["success_rate"] >= 0.7
    assert (run_dir / "evaluation.md").is_file()
    assert (run_dir / "figures" / "evaluation.png").stat().st_size > 0
    c = metrics["collect"]
    assert 4.0 < c["traffic"]["mean_speed"] < 9.0
    assert c["action_extraction"]["with_smoothing"]["accel_rmse"] < \
        0.05 * c["action_extraction"]["without_smoothing"]["accel_rmse"]
    assert (run_dir / "videos" / "mpur_episode.mp4").stat().st_size > 0
    # the stochastic model's long-unroll phase (model.long_npred) starts from the short
    # phase's best and writes the model every later stage loads
    from worldplan.worldmodels.base import load_model

    ckpt = run_dir / "checkpoints"
    short = load_model(ckpt / "model-stochastic-short" / "best.pt")
    long = load_model(ckpt / "model-stochastic" / "best.pt")
    assert any(not torch.equal(a, b) for a, b in zip(short.state_dict().values(),
                                                      long.state_dict().values(), strict=True))
    last = torch.load(ckpt / "model-stochastic" / "last.pt", weights_only=False)
    assert last["training"]["state"]["step"] == 3
    sto = metrics["train-model"]["stochastic"]
    assert sto["long_npred"] == 4 and sto["steps"] == 3
    # the plan-aware world with the scene-spread U trains no head
    assert run_cli(["highway", "train-policy", "--preset", "quick", "--run", str(run_dir),
                    "--policy.world", "plan-head", "--policy.methods", "imitation", "mpur",
                    "--policy.u-source", "scene", "--policy.scene-windows", "8",
                    "--policy.lam", "0.05"]) == 0
    plan = json.loads((run_dir / "metrics.json").read_text())["train-policy"]["plan_head"]
    assert plan["u_source"] == "scene" and "pairs" not in plan
    assert 0.0 <= plan["auroc_unusual_vs_recorded"] <= 1.0 and plan["u_recorded"] > 0
    assert not (ckpt / "plan-head.pt").exists()
    drives = c["counterfactual_drives"]
    assert drives["drives"] > 0 and 0.0 < drives["collision_rate"] < 1.0

