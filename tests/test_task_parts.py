"""Each task model implements only the parts it has (envs/interface.py), and a tool that
needs a missing part says which in one line."""

from __future__ import annotations

import pytest
import torch

from worldplan.envs.gym_tasks import make_task_model
from worldplan.envs.highway.task_model import HighwayTaskModel
from worldplan.envs.interface import Costs, Dynamics, Map, Sensor, TaskModel, require
from worldplan.envs.truck import TruckTaskModel
from worldplan.filters import ParticleFilter
from worldplan.filters.nonlinear import ExtendedKalmanFilter


def _navigation():
    import gymnasium as gym

    env = gym.make("worldplan/Navigation2D-v0")
    env.reset(seed=0)
    return env.unwrapped.task_model


PARTS = (Dynamics, Costs, Sensor, Map)
EXPECTED = {  # task -> the parts it has
    "truck": (TruckTaskModel, {Dynamics, Costs, Sensor}),
    "highway": (HighwayTaskModel, {Sensor}),
    "navigation": (_navigation, {Dynamics, Costs, Sensor, Map}),
    "Pendulum-v1": (lambda: make_task_model("Pendulum-v1"), {Dynamics, Costs}),
    "MountainCarContinuous-v0": (lambda: make_task_model("MountainCarContinuous-v0"),
                                 {Dynamics, Costs}),
    "HalfCheetah-v5": (lambda: make_task_model("HalfCheetah-v5"), {Costs}),
    "InvertedPendulum-v5": (lambda: make_task_model("InvertedPendulum-v5"), {Costs}),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_a_task_has_exactly_its_parts(name: str) -> None:
    make, parts = EXPECTED[name]
    task = make()
    assert isinstance(task, TaskModel)
    assert {p for p in PARTS if isinstance(task, p)} == parts


def test_a_tool_names_the_missing_part() -> None:
    half_cheetah = make_task_model("HalfCheetah-v5")
    with pytest.raises(TypeError, match=r"HalfCheetahTaskModel lacks closed-form dynamics "
                                        r"\(step\) and a sensor model .* which a particle "
                                        "filter needs"):
        ParticleFilter.from_task_model(half_cheetah, torch.zeros(17), torch.eye(17))
    with pytest.raises(TypeError, match="HighwayTaskModel lacks closed-form dynamics"):
        ExtendedKalmanFilter.from_task_model(HighwayTaskModel(), torch.zeros(4), torch.eye(4))
    require(TruckTaskModel(), Dynamics, Costs, Sensor, needed_by="a test")  # has them all
    with pytest.raises(TypeError, match=r"TruckTaskModel lacks an occupancy map \(occupancy\), "
                                        r"which A\* needs"):
        require(TruckTaskModel(), Map, needed_by="A*")
