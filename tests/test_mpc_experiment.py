"""experiments/mujoco.py: the stages end to end at toy size, config errors, video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldplan.errors import UserError
from worldplan.experiments.mujoco import (
    TASK,
    LoopSettings,
    ModelSettings,
    MPCSettings,
    MujocoConfig,
    load_episodes,
    random_episodes,
    save_episodes,
)
from worldplan.experiments.runs import Run
from worldplan.experiments.video import write_video

torch.set_num_threads(1)


def tiny(**kw) -> MujocoConfig:
    base = dict(episodes=2, max_steps=15, video=False,
                mpc=MPCSettings(horizon=5, samples=20, elites=4, iterations=1, restarts=1),
                learn=ModelSettings(hidden=16, k=2, epochs=1, batch_size=32),
                loop=LoopSettings(random_steps=60, rounds=1, steps_per_round=20,
                                  max_episode_steps=20))
    base.update(kw)
    return MujocoConfig(**base)


@pytest.mark.parametrize("planner", ["mppi", "cem", "gradient", "ilqr"])
def test_evaluate_true_pendulum(tmp_path: Path, planner: str) -> None:
    run = Run.create(tmp_path / "run", "mujoco")
    TASK.stages["evaluate"](tiny(env="Pendulum-v1", model="true", planner=planner), run)
    m = json.loads((run.path / "metrics.json").read_text())["evaluate"]
    assert m["episodes"] == 2 and len(m["returns"]) == 2 and m["env_steps"] == 0
    assert m["eval_env_steps"] == 30 and np.isfinite(m["mean_return"])
    assert m["std_return"] >= 0


def test_model_based_loop_at_toy_size(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", "mujoco")
    config = tiny(env="InvertedPendulum-v5", model="ensemble", planner="cem")
    for stage in ("collect", "train-model", "evaluate"):
        TASK.stages[stage](config, run)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["collect"]["env_steps"] == 60
    curve = metrics["train"]["curve"]
    assert len(curve) == 1 and curve[0]["env_steps"] >= 70
    assert metrics["train"]["env_steps"] == curve[0]["env_steps"]
    assert metrics["evaluate"]["env_steps"] == curve[0]["env_steps"]
    assert (run.checkpoints / "model.pt").is_file()
    assert (run.figures / "learning_curve.png").is_file()
    assert any((run.path / "tensorboard").iterdir())


def test_cvae_model_plans_with_latent(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", "mujoco")
    config = tiny(env="InvertedPendulum-v5", model="cvae", planner="mppi",
                  loop=LoopSettings(random_steps=60, rounds=0))
    for stage in ("collect", "train-model", "evaluate"):
        TASK.stages[stage](config, run)
    assert np.isfinite(json.loads((run.path / "metrics.json").read_text())["evaluate"]
                       ["mean_return"])


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", "mujoco")
    with pytest.raises(ValueError, match="planner"):
        TASK.stages["evaluate"](tiny(planner="pid"), run)
    with pytest.raises(ValueError, match="unknown env"):
        TASK.stages["evaluate"](tiny(env="CartPole-v1"), run)
    with pytest.raises(ValueError, match="closed-form"):
        TASK.stages["evaluate"](tiny(env="Reacher-v5", model="true"), run)
    with pytest.raises(UserError, match="train-model"):
        TASK.stages["evaluate"](tiny(env="Reacher-v5", model="ensemble"), run)


def test_episodes_roundtrip_and_video(tmp_path: Path) -> None:
    eps = random_episodes("InvertedPendulum-v5", 40, seed=0)
    assert sum(len(e["actions"]) for e in eps) == 40
    save_episodes(tmp_path / "e.npz", eps)
    back = load_episodes(tmp_path / "e.npz")
    assert len(back) == len(eps)
    for a, b in zip(eps, back, strict=True):
        np.testing.assert_array_equal(a["states"], b["states"])
        assert len(b["states"]) == len(b["actions"]) + 1
    frames = [np.full((32, 48, 3), i * 20, dtype=np.uint8) for i in range(5)]
    path = write_video(frames, tmp_path / "v.mp4", fps=10)
    assert path is not None and path.stat().st_size > 0


def test_terminal_setting_is_checked(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", "mujoco")
    with pytest.raises(ValueError, match="mpc.terminal"):
        TASK.stages["evaluate"](tiny(env="Pendulum-v1", model="true",
                                     mpc=MPCSettings(terminal="value")), run)


@pytest.mark.slow
def test_inverted_pendulum_learned_model_reaches_the_maximum(tmp_path: Path) -> None:
    """The documented default run (5,000 env steps of data, learned ensemble, CEM):
    every seeded evaluation episode reaches the maximum return 1000 (about 5 minutes)."""
    run = Run.create(tmp_path / "run", "mujoco")
    config = MujocoConfig(env="InvertedPendulum-v5", model="ensemble", planner="cem",
                          seed=0, episodes=10, video=False)
    for stage in ("collect", "train-model", "evaluate"):
        TASK.stages[stage](config, run)
    m = json.loads((run.path / "metrics.json").read_text())["evaluate"]
    assert m["env_steps"] <= 5000
    assert m["returns"] == [1000.0] * 10
