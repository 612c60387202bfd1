"""The highway task's configuration: the sections of its four stages, the presets, the
method names, and the checks of a whole config (run before any stage works).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from worldplan.envs.highway.privileged import IDMDriver

DATASET_TASK = "highway"
RECORDING_FILE = "recording.npz"


# ----------------------------------------------------------------------------- configs
@dataclass
class CollectConfig:
    """Traffic recording, tracker noise and smoothing."""

    record_seconds: float = 240.0
    warmup_seconds: float = 60.0
    max_cars: int = 300  # episodes in the data set (the cars that cross the whole road)
    noise_long: float = 0.3  # m, tracker noise along the road (std)
    noise_lat: float = 0.15  # m, across
    jerk_long: float = 0.5  # smoother's white-jerk intensity along the road, m^2/s^5
    jerk_lat: float = 0.005  # across (tuned on a quick recording: docs/highway.md)
    # the 4th, off-road channel: leaving the road ends an episode, so the cost sees it
    offroad_channel: bool = True
    # counterfactual drives (envs/highway/counterfactual.py): each recorded car re-driven
    # with perturbed actions among the non-reactive recorded traffic, for the world model
    # only; 0 = the recorded episodes alone (PPUU's purely observational data)
    drives_per_car: int = 3
    drive_seconds: float = 10.0
    drive_accel_std: float = 0.5  # m/s^2, OU perturbation of the recorded acceleration
    drive_steer_std: float = 0.0015  # 1/m, of the recorded steering
    drive_tau: float = 2.0  # s, the perturbation's time constant


@dataclass
class ModelConfig:
    """The world models (ImageModel): context length, sizes, training steps."""

    ncond: int = 2
    npred: int = 3
    hidden: int = 64
    channels: tuple[int, ...] = (8, 16, 16)
    dropout: float = 0.1
    z_dim: int = 8
    beta: float = 0.05
    p_z: float = 0.5
    z_dropout: str = "zero"
    det_steps: int = 1500
    sto_steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    horizon_error: bool = True  # measure the open-loop test error per horizon
    # exact ego motion (worldmodels.ego_motion): the network predicts the other cars only,
    # the ego moves by the kinematic update and a differentiable warp; False = PPUU's
    # ImageModel, which learns the ego's motion too
    ego_motion: bool = True
    # how the ego-motion model moves the other cars: "cost-volume" (each keeps the
    # velocity it showed in the context, measured by block matching) or "global" (one
    # learned flow for all); see worldmodels/ego_motion.py for the measured difference
    flow_prior: str = "cost-volume"
    # after the stochastic model's npred-step phase, fine-tune it on long_npred-step
    # open-loop unrolls (0 = off): the learners roll its scene out for 3-6 s, and a 3-step
    # loss never sees its own errors compound (docs/highway.md, "A trunk trained on long
    # unrolls")
    long_npred: int = 0
    long_steps: int = 600
    long_lr: float = 3e-4


@dataclass
class PolicyConfig:
    """Policy learning (all methods share the policy network)."""

    methods: tuple[str, ...] = ("imitation", "oracle", "vg", "svg", "mpur", "mper")
    seeds: tuple[int, ...] = (0, 1, 2)  # policy-training seeds (one data set and model)
    imitation_steps: int = 3000
    bptt_steps: int = 300
    batch_size: int = 8
    horizon: int = 10
    lr: float = 1e-4
    lam: float = 0.5  # MPUR's uncertainty weight
    mc_samples: int = 2
    lane_weight: float = 0.2
    # "max" (PPUU) or "front-rear" (the nearest car ahead and the nearest behind both
    # count); experiments/highway_shared.py cost_fn
    proximity: str = "max"
    hidden: int = 64
    channels: tuple[int, ...] = (8, 8, 16)
    # context frames the policy sees (0 = the world model's ncond); the world models are
    # fed the last ncond of them
    ncond: int = 0
    # "oracle": BPTT through the true replayed future (envs/highway/oracle.py), the check
    # of the objective and the learner with a perfect model
    oracle_steps: int = 800  # 800 x 8 windows x 3 s: 868 s on this CPU at load 4-5
    oracle_horizon: int = 30
    oracle_batch_size: int = 8
    oracle_lr: float = 3e-4
    # the oracle learner first drives a random 0..oracle_burn_in steps through the oracle
    # without a graph, then takes the gradient over oracle_horizon steps: it then also
    # learns from the states its own driving leads to (planners/policy/mpur.py)
    oracle_burn_in: int = 0
    # the same for the learners through a world model (vg, svg, mpur)
    burn_in: int = 0
    # the world vg / svg / mpur learn through: "trunk" = the world models rolled out in
    # the BPTT loop, U = their MC-dropout variance (local_uncertainty); "plan-head" = the
    # stochastic trunk's scene cached per window plus a residual head ensemble that sees
    # the ego's offset from the recorded pose, U = PPUU's z-scored hinge of its variances
    # (experiments/highway_plan.py); vg then uses z = 0
    world: str = "trunk"
    # the policy the model-based learners start from ("" = the seed's imitation policy;
    # a method name continues from that method's checkpoint of the seed)
    init_from: str = ""
    head_windows: int = 400  # windows (half counterfactual drives) for the head's data
    head_steps: int = 800
    head_horizon: int = 30  # steps of each window of the head's data
    head_members: int = 4
    head_width: int = 8
    # windows whose trunk scenes are rolled out once per learner (the scene does not
    # depend on the policy; experiments/highway_plan.py scene_pool)
    scene_windows: int = 384
    # MPUR measures the plan-aware U at every u_every-th step of its horizon only (the
    # head's passes are most of an update's cost; experiments/highway_plan.py)
    u_every: int = 1
    # what MPUR's U measures in the plan-head world: "head" = the head ensemble's spread,
    # which grows with the ego's offset from its recorded pose whatever the traffic;
    # "scene" = the spread of ``scene_samples`` trunk scenes (prior z and MC-dropout
    # masks) seen from the ego's pose: large only near cars whose future the model is
    # unsure of (experiments/highway_plan.py)
    u_source: str = "head"
    scene_samples: int = 4
    # the other cars the learners' cost sees in the plan-head world: "one" = the trunk's
    # scene with a prior z; "envelope" = the pixelwise max of that scene and the
    # ``scene_samples`` sampled scenes, so a car is wherever one plausible future puts it
    # (the single scene is optimistic about the cars the ego closes in on;
    # experiments/highway_plan.py scene_pool)
    scene_cars: str = "one"
    # BPTT: no gradient through the policy's image input (halves the backward pass;
    # the cost and the state inputs still carry it); planners/policy/mpur.py
    detach_frames: bool = True
    # of the frames before the last, the policy sees only these channels (the other
    # cars; lanes, ego and off-road of the last frame suffice): a 10-frame context then
    # costs the first convolution 13 input channels instead of 40. () = all channels
    history_channels: tuple[int, ...] = (1,)
    # the policy also sees each other car's speed relative to the ego (block matching
    # between its last two frames; experiments/highway_policy_net.py). Off by default: it
    # did not help imitation (seeds 0 / 1: 20.0 / 13.3 % against 26.7 / 10.0 %; docs/highway.md)
    relative_motion: bool = False


@dataclass
class EvalConfig:
    ncond: int = 20  # steps the ego replays its own recording before the policy drives
    max_steps: int = 800
    methods: tuple[str, ...] = ("no-action", "expert-replay", "idm", "idm-watch", "oracle",
                                "imitation", "vg", "svg", "mpur", "mper", "mpc")
    # held-out cars: the training recording's test split plus fresh recordings made with
    # these seeds (never the training seed), each cached in the run's data folder
    test_split: bool = True
    eval_seeds: tuple[int, ...] = (1001, 1002)
    eval_record_seconds: float = 150.0
    eval_warmup_seconds: float = 60.0
    eval_cars: int = 150  # per fresh recording
    uncertainty: bool = True  # MC-dropout U of the stochastic model along the episodes
    mc_samples: int = 2
    uncertainty_every: int = 10  # steps between MC-dropout uncertainty measurements
    video: bool = True
    mpc_horizon: int = 5  # gradient MPC through the stochastic model (z = 0)
    mpc_iterations: int = 5
    mpc_lr: float = 0.1
    mpc_u_weight: float = 0.1  # weight of the MC-dropout uncertainty in MPC's cost
    # compute the other cars' predicted motion once per plan, re-warp it per inner
    # iteration (experiments/highway_mpc.py; the speed-up is in benchmarks/bench_highway.py)
    mpc_cache: bool = True
    # gradient MPC costs seconds per step for a batch of egos: it drives only the first
    # mpc_cars cars of each held-out set (its row says how many episodes)
    mpc_cars: int = 20


@dataclass
class HighwayConfig:
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch CPU threads (small convolutions run fastest on one thread)
    episodes: int = 0  # evaluation episodes (held-out cars); 0 = all of them
    collect: CollectConfig = field(default_factory=CollectConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


def default_config() -> HighwayConfig:
    return HighwayConfig()


def quick_config() -> HighwayConfig:
    return HighwayConfig(
        collect=CollectConfig(record_seconds=75.0, warmup_seconds=40.0, max_cars=40),
        model=ModelConfig(ncond=2, npred=2, hidden=64, channels=(8, 16, 16), z_dim=8,
                          det_steps=15, sto_steps=15, batch_size=16, horizon_error=False,
                          long_npred=4, long_steps=3),
        policy=PolicyConfig(seeds=(0,), imitation_steps=60, bptt_steps=8, batch_size=8, horizon=4,
                            mc_samples=2, hidden=64, channels=(8, 8, 16), oracle_steps=30,
                            oracle_horizon=10, oracle_batch_size=8),
        evaluate=EvalConfig(max_steps=800, mc_samples=2, uncertainty_every=10, video=True,
                            mpc_horizon=3, mpc_iterations=2, eval_seeds=(1001,),
                            eval_record_seconds=70.0, eval_warmup_seconds=30.0, eval_cars=6,
                            mpc_cars=4,
                            # gradient MPC costs minutes even on 4 cars per set: tested on
                            # its own (tests/test_highway_mpc.py)
                            methods=("no-action", "expert-replay", "idm", "oracle",
                                     "imitation", "vg", "svg", "mpur", "mper")))



def learners_config() -> HighwayConfig:
    """The default data and models, with the policy settings under which the learners
    drive (docs/highway.md): a 10-frame context, a 3 s horizon after a 0-3 s burn-in of
    the policy's own driving, 800 updates (the oracle 2,400: it gains 4 points over 800
    and none from 4,800), the front-rear proximity, and the plan-aware
    world (``plan-head``) whose U is the spread of the trunk's sampled scenes seen from
    the ego's pose (``u_source="scene"``: the head's U pulled the policy back to the
    recorded poses and cost it 34-46 points). The stochastic trunk trains on for 600
    updates on 10-step unrolls (``model.long_npred``), which raises the correlation of
    its scene's cost with the true one from 0.64 to 0.75. About 10x the default
    preset's policy compute."""
    config = HighwayConfig()
    config.model.long_npred = 10
    config.policy = PolicyConfig(imitation_steps=1500, bptt_steps=800, horizon=30, burn_in=30,
                                 lr=3e-4, lam=0.05, u_every=1, u_source="scene",
                                 proximity="front-rear", ncond=10, world="plan-head",
                                 oracle_burn_in=30, oracle_steps=2400)
    # gradient MPC drives 20 cars per set at minutes a car: run it on its own
    config.evaluate = EvalConfig(methods=("no-action", "expert-replay", "idm-watch", "oracle",
                                          "imitation", "vg", "svg", "mpur", "mper"))
    return config

# ----------------------------------------------------------------------------- methods, checks
POLICY_METHODS = ("imitation", "oracle", "vg", "svg", "mpur", "mper")


def _privileged() -> dict:

    # drivers that see the true replayed traffic: the harness's ceiling (docs/highway.md)
    return {"idm-keep-lane": IDMDriver(copy_lanes=False),
            "idm": IDMDriver(),
            "idm-watch": IDMDriver(time_gap=0.6, watch_follower=True)}


PRIVILEGED = _privileged()
METHODS = ("no-action", "expert-replay", *PRIVILEGED, *POLICY_METHODS, "mpc")
MODEL_DIRS = {"deterministic": "model-deterministic", "stochastic": "model-stochastic"}
# the stochastic model's short-unroll phase when a long-unroll phase follows it
SHORT_STOCHASTIC_DIR = "model-stochastic-short"
# which world model each learned method trains through (None: no model)
METHOD_MODEL = {"imitation": None, "oracle": None, "vg": "deterministic", "svg": "stochastic",
                "mpur": "stochastic", "mper": "stochastic"}


def check_methods(methods: tuple[str, ...], allowed: tuple[str, ...], where: str) -> None:
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown method(s) {', '.join(unknown)}; "
                         f"available: {', '.join(allowed)}")
    if not methods:
        raise ValueError(f"{where}: no method given")


PROXIMITY_FORMS = ("max", "front-rear")
WORLDS = ("trunk", "plan-head")
U_SOURCES = ("head", "scene")
SCENE_CARS = ("one", "envelope")


def policy_ncond(config: HighwayConfig) -> int:
    """The policy's context length: ``policy.ncond``, or the world model's when 0."""
    return config.policy.ncond or config.model.ncond


def validate_config(config: HighwayConfig) -> None:
    """Checks of the whole config that the stages would otherwise make only when they
    reach them (the CLI runs these before any stage works)."""
    check_methods(tuple(config.policy.methods), POLICY_METHODS, "policy.methods")
    check_methods(tuple(config.evaluate.methods), METHODS, "evaluate.methods")
    if config.model.z_dim < 1:
        raise ValueError(f"model.z_dim must be >= 1, got {config.model.z_dim}")
    if config.model.long_npred < 0 or (config.model.long_npred and config.model.long_steps < 1):
        raise ValueError(f"model.long_npred must be >= 0 and model.long_steps >= 1, got "
                         f"{config.model.long_npred} and {config.model.long_steps}")
    if config.evaluate.ncond < 1 or config.evaluate.max_steps < 1:
        raise ValueError("evaluate.ncond and evaluate.max_steps must be >= 1")
    if not config.policy.seeds or len(set(config.policy.seeds)) != len(config.policy.seeds):
        raise ValueError(f"policy.seeds must be distinct and non-empty, got "
                         f"{config.policy.seeds}")
    if config.policy.init_from and config.policy.init_from not in POLICY_METHODS:
        raise ValueError(f"policy.init_from must be a policy method, got "
                         f"{config.policy.init_from!r}")
    if config.policy.world not in WORLDS:
        raise ValueError(f"policy.world must be one of {WORLDS}, got {config.policy.world!r}")
    if 0 < config.policy.ncond < config.model.ncond:
        raise ValueError(f"policy.ncond {config.policy.ncond} is shorter than the world "
                         f"model's context (model.ncond {config.model.ncond}); 0 takes it")
    if config.policy.u_every < 1:
        raise ValueError(f"policy.u_every must be >= 1, got {config.policy.u_every}")
    if config.policy.u_source not in U_SOURCES:
        raise ValueError(f"policy.u_source must be one of {U_SOURCES}, got "
                         f"{config.policy.u_source!r}")
    if config.policy.scene_cars not in SCENE_CARS:
        raise ValueError(f"policy.scene_cars must be one of {SCENE_CARS}, got "
                         f"{config.policy.scene_cars!r}")
    if config.policy.scene_samples < 2:
        raise ValueError(f"policy.scene_samples must be >= 2 (a spread needs two scenes), "
                         f"got {config.policy.scene_samples}")
    if config.policy.burn_in < 0 or config.policy.oracle_burn_in < 0:
        raise ValueError(f"policy.burn_in and policy.oracle_burn_in must be >= 0, got "
                         f"{config.policy.burn_in}, {config.policy.oracle_burn_in}")


def shown_defaults(config: HighwayConfig) -> HighwayConfig:
    """``config`` with ``policy.ncond = 0`` ("the world model's context") replaced by the
    context the stages will use, for ``--help``."""
    return dataclasses.replace(config, policy=dataclasses.replace(
        config.policy, ncond=policy_ncond(config)))
