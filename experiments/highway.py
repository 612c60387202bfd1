"""``worldplan highway <stage>``: learning to drive in dense traffic from observation (PPUU).

collect       simulate IDM + MOBIL traffic, record every car, add camera-tracker noise,
              recover the tracks with the Kalman RTS smoother (filters/), extract actions
              by inverting the kinematic update, render each car's views: one episode per
              car, split 80/10/10 by car (worldmodels' data set format)
train-model   the image + state world models (worldmodels.images.ImageModel): a
              deterministic one, then a stochastic one (cVAE, z-dropout) warm-started from it
train-policy  1-step imitation; VG (deterministic model), SVG (stochastic, z from the
              prior), MPUR (SVG + the MC-dropout uncertainty hinge), MPER (posterior z,
              expert-regularised), by backprop through time through the frozen models
evaluate      one episode per held-out car among the recorded (non-reactive) traffic: the
              car replays its first ``ncond`` steps, then the method drives; success rate,
              mean distance, mean uncertainty per method in metrics.json; a video

See docs/highway.md for the measured figures and what is not reached. The task is split
into modules with one job each: highway_config (configs, presets, checks), highway_data
(collect, train-model), highway_policy (train-policy), highway_evaluate (evaluate),
highway_shared (the loaders, costs and policy checkpoints they share) and
highway_policy_net (the policy network); the reusable parts live in envs/highway/,
worldmodels/, planners/policy/ and the other highway_* modules.
"""

from __future__ import annotations

from worldplan.experiments.highway_config import (
    METHODS,
    CollectConfig,
    EvalConfig,
    HighwayConfig,
    ModelConfig,
    PolicyConfig,
    default_config,
    learners_config,
    quick_config,
    shown_defaults,
    validate_config,
)
from worldplan.experiments.highway_data import (
    collect,
    extraction_errors,
    smooth_tracks,
    tracker_noise,
    traffic_statistics,
    train_model_stage,
)
from worldplan.experiments.highway_evaluate import evaluate_stage, u_map
from worldplan.experiments.highway_policy import train_policy_stage
from worldplan.experiments.highway_shared import cost_fn
from worldplan.experiments.tasks import Task, register_task

TASK = register_task(Task(
    name="highway",
    config_cls=HighwayConfig,
    presets={"default": default_config, "quick": quick_config,
             "learners": learners_config},
    stages={"collect": collect, "train-model": train_model_stage,
            "train-policy": train_policy_stage, "evaluate": evaluate_stage},
    description="PPUU dense-traffic driving: simulator, tracked data set, policies",
    validate=validate_config,
    resumable=("train-model",),
    shown_defaults=shown_defaults,
    # evaluate reads policy.seeds (which policies) and lane_weight (gradient MPC's cost)
    sections={"collect": ("collect",), "train-model": ("model",),
              "train-policy": ("policy",),
              "evaluate": ("evaluate", "episodes", "policy.seeds", "policy.lane_weight")},
    help_note="--policy.ncond is shown as the context it takes: 0 (the preset's value) "
              "means the world model's,\n--model.ncond {config.model.ncond}.",
))

__all__ = ["METHODS", "TASK", "CollectConfig", "EvalConfig", "HighwayConfig", "ModelConfig",
           "PolicyConfig", "collect", "cost_fn", "default_config", "evaluate_stage",
           "extraction_errors", "quick_config", "smooth_tracks", "tracker_noise",
           "traffic_statistics", "train_model_stage", "train_policy_stage", "u_map",
           "validate_config"]
