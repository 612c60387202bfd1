"""Dense highway traffic (PPUU): IDM + MOBIL simulator, ego-centred images, image costs."""

from worldplan.envs.highway.costs import CostConfig, image_costs_np, image_costs_torch
from worldplan.envs.highway.kinematics import (
           actions_from_states,
           states_from_tracks,
           step_np,
           step_state_torch,
)
from worldplan.envs.highway.recording import Recording, record_traffic
from worldplan.envs.highway.render import View, render_scene, render_views
from worldplan.envs.highway.replay import OUTCOMES, ReplayBatch
from worldplan.envs.highway.road import Road
from worldplan.envs.highway.task_model import HighwayTaskModel
from worldplan.envs.highway.traffic import Traffic, TrafficConfig
from worldplan.envs.registration import register_env

register_env("worldplan/DenseTraffic-v0", "worldplan.envs.highway.env:DenseTrafficEnv")

__all__ = ["OUTCOMES", "CostConfig", "HighwayTaskModel", "Recording", "ReplayBatch", "Road",
           "Traffic", "TrafficConfig", "View", "actions_from_states", "image_costs_np",
           "image_costs_torch", "record_traffic", "render_scene", "render_views",
           "states_from_tracks", "step_np", "step_state_torch"]
