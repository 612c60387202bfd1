"""The task registry: a task is one module that registers itself; the CLI finds the suite's
own tasks by experiments/tasks.py's TASK_MODULES and any other by an entry point."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from worldplan.envs import ENVIRONMENTS, register_env
from worldplan.experiments import tasks
from worldplan.experiments.cli import main
from worldplan.experiments.tasks import Task, UnknownNameError, available_tasks, load_task

TOY_MODULE = "worldplan_toy_task_plugin"
TOY_ENV = "worldplan-test/Toy-v0"

# A whole task in one module: its environment, config, preset and stage.
TOY_SOURCE = f'''
"""A toy task: drive x to 0 with x' = x + a."""
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from worldplan.envs import register_env
from worldplan.experiments.tasks import Task, register_task


class ToyEnv(gym.Env):
    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.array([3.0], np.float32)
        return self.x.copy(), {{}}

    def step(self, action):
        self.x = self.x + np.clip(action, -1.0, 1.0).astype(np.float32)
        return self.x.copy(), -float(abs(self.x[0])), bool(abs(self.x[0]) < 1e-6), False, {{}}


register_env("{TOY_ENV}", "{TOY_MODULE}:ToyEnv")


@dataclass
class ToyConfig:
    seed: int = 0
    device: str = "cpu"
    episodes: int = 2
    gain: float = 1.0


def evaluate(cfg, run):
    env = gym.make("{TOY_ENV}")
    steps = []
    for e in range(cfg.episodes):
        x, _ = env.reset(seed=cfg.seed + e)
        for t in range(1, 20):
            x, _, done, _, _ = env.step(-cfg.gain * np.clip(x, -1, 1))
            if done:
                break
        steps.append(t)
    run.update_metrics("evaluate", {{"toy": {{"episodes": cfg.episodes,
                                            "success_rate": 1.0, "steps": steps}}}})


register_task(Task(name="toy", config_cls=ToyConfig,
                   presets={{"default": ToyConfig, "quick": lambda: ToyConfig(episodes=1)}},
                   stages={{"evaluate": evaluate}}, description=__doc__))
'''


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy module and an installed distribution's metadata naming it as an entry point,
    on sys.path; nothing of the suite is edited. Forgets the task and the id afterwards."""
    (tmp_path / f"{TOY_MODULE}.py").write_text(textwrap.dedent(TOY_SOURCE))
    dist = tmp_path / "worldplan_toy_task-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: worldplan-toy-task\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{tasks.ENTRY_POINT_GROUP}]\ntoy = {TOY_MODULE}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(TOY_MODULE, None)
    tasks._REGISTERED.pop("toy", None)
    ENVIRONMENTS.pop(TOY_ENV, None)
    gym.registry.pop(TOY_ENV, None)


def test_a_task_module_appears_in_the_cli_without_a_central_edit(
        toy_plugin: Path, capsys: pytest.CaptureFixture) -> None:
    assert "toy" in available_tasks() and TOY_MODULE not in sys.modules  # found, not imported
    with pytest.raises(SystemExit):  # no task: the usage and the task list
        main([])
    listed = capsys.readouterr().out.split("tasks:")[-1]
    assert [t.strip() for t in listed.split(",")] == [*tasks.TASK_MODULES, "toy"]

    run = toy_plugin / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", "evaluate", "--run", str(run), "--episodes", "3", "--gain", "0.5"])
    assert exit_info.value.code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # x = 3 driven by -0.5 * clip(x): 2.5, 2, 1.5, 1, 0.5, 0.25, ... never exactly 0 in 19
    assert metrics["evaluate"]["toy"]["steps"] == [19, 19, 19]
    assert load_task("toy").stages["evaluate"].__module__ == TOY_MODULE
    assert ENVIRONMENTS[TOY_ENV] == (f"{TOY_MODULE}:ToyEnv", {})
    env = gym.make(TOY_ENV)
    assert env.reset(seed=0)[0][0] == 3.0 and env.step(np.array([-1.0], np.float32))[0][0] == 2.0


def test_the_suite_registers_each_task_from_its_own_module() -> None:
    for name, module in tasks.TASK_MODULES.items():
        task = load_task(name)
        assert task.name == name and sys.modules[module].TASK is task
    assert {"worldplan/TruckBackerUpper-v0", "worldplan/DenseTraffic-v0",
            "worldplan/Navigation2D-v0"} <= set(ENVIRONMENTS)
    assert all(env_id in gym.registry for env_id in ENVIRONMENTS)


def test_a_name_is_registered_once(toy_plugin: Path) -> None:
    truck = load_task("truck")
    assert tasks.register_task(truck) is truck  # the same task again: a no-op
    with pytest.raises(ValueError, match="'truck' is registered twice"):
        tasks.register_task(Task(name="truck", config_cls=dict, presets={}, stages={}))
    with pytest.raises(TypeError, match="takes a Task"):
        tasks.register_task("truck")  # type: ignore[arg-type]
    # an entry point cannot take a name of the suite's own
    (toy_plugin / "worldplan_toy_task-0.1.dist-info" / "entry_points.txt").write_text(
        f"[{tasks.ENTRY_POINT_GROUP}]\ntruck = {TOY_MODULE}\ntoy2 = {TOY_MODULE}\n")
    assert tasks.task_modules()["truck"] == tasks.TASK_MODULES["truck"]
    with pytest.raises(UnknownNameError, match="registers no task 'toy2'"):
        load_task("toy2")  # the module registers "toy" only


def test_an_environment_id_is_registered_once() -> None:
    register_env("worldplan/TruckBackerUpper-v0", "worldplan.envs.truck.env:TruckBackerUpperEnv")
    with pytest.raises(ValueError, match="already registered as worldplan.envs.truck.env"):
        register_env("worldplan/TruckBackerUpper-v0", "elsewhere:Truck")
    with pytest.raises(ValueError, match="'package.module:Class'"):
        register_env("worldplan-test/Bad-v0", "no_colon")
