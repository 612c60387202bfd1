"""``worldplan mujoco <stage>``: MPC on gymnasium tasks with true or learned dynamics.

collect       random-action episodes (the first data of the model-based loop;
              ``data/episodes.npz``)
train-model   the model-based loop: train the world model (ensemble, cVAE or deterministic)
              on all data, run MPC episodes with it in the real env, add their data,
              retrain; TensorBoard ``mujoco/return`` against environment steps; the data
              so far in ``data/loop_episodes.npz`` (run again, it starts from collect's)
evaluate      the planner alone over vectorised seeded episodes (``--model true`` plans with
              the task's true dynamics where they exist: Pendulum-v1); metrics.json
              ``mean_return``, ``std_return``, ``env_steps``, planning ms/step; a video

Examples::

    worldplan mujoco evaluate --env Pendulum-v1 --model true --planner mppi
    worldplan mujoco all --env InvertedPendulum-v5 --model ensemble --planner cem

Length: the task's config, its planner and model construction and its three stages read
as one page; the reusable parts live in planners/mpc/factory.py and worldmodels/.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from worldplan.checkpoint import (  # noqa: E402
    atomic_write_bytes,
    atomic_write_text,
    save_checkpoint,
)
from worldplan.envs.gym_tasks import (  # noqa: E402
    TASK_MODELS,
    GymTaskModel,
    make_env,
    make_task_model,
    make_vector_env,  # noqa: E402
)
from worldplan.errors import UserError  # noqa: E402
from worldplan.experiments.common import (  # noqa: E402
    resolve_device,
    save_figure,
    seed_everything,
)
from worldplan.experiments.runs import Run  # noqa: E402
from worldplan.experiments.tasks import Task, register_task  # noqa: E402
from worldplan.experiments.video import write_video  # noqa: E402
from worldplan.planners.control_loop import Transition, run_episodes  # noqa: E402
from worldplan.planners.mpc import Planner, RecedingHorizonController  # noqa: E402
from worldplan.planners.mpc.factory import (  # noqa: E402
    PLANNERS,
    MPCSettings,
    build_planner,
    lqr_terminal_cost,
    model_dynamics,
    resolve_settings,
)
from worldplan.worldmodels import (  # noqa: E402
    DeterministicModel,
    TrainConfig,
    load_dataset,
    load_model,
    train_model,
    write_dataset,
)
from worldplan.worldmodels.ensemble import Ensemble  # noqa: E402
from worldplan.worldmodels.training import train_stochastic  # noqa: E402

log = logging.getLogger(__name__)

MODELS = ("ensemble", "cvae", "deterministic", "true")
RANDOM_DATA = "episodes.npz"  # collect's random-action episodes
LOOP_DATA = "loop_episodes.npz"  # those and the model-based loop's MPC episodes so far

# Per-env defaults (used where a setting is left at 0 / auto / negative), declared by each
# task's adapter in envs/gym_tasks/ (``GymTaskModel.planning``).
ENV_DEFAULTS: dict[str, dict[str, Any]] = {env: cls.planning for env, cls in TASK_MODELS.items()}



@dataclass
class ModelSettings:
    """World model and its training (worldmodels/)."""

    hidden: int = 0  # 0: the per-env default
    layers: int = 2
    dropout: float = 0.0
    k: int = 3  # ensemble members
    z_dim: int = 2  # cVAE latent size
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    npred: int = 2  # open-loop steps in the training loss


@dataclass
class LoopSettings:
    """The model-based loop: random data, then rounds of (train, MPC episodes, add data)."""

    random_steps: int = 1000
    rounds: int = 4
    steps_per_round: int = 1000
    exploration: float = 0.0  # Gaussian action noise while collecting (fraction of range)
    max_episode_steps: int = 0  # cap on each data-collection episode (0: env default)


@dataclass
class MujocoConfig:
    env: str = "InvertedPendulum-v5"
    planner: str = "cem"
    model: str = "ensemble"
    seed: int = 0
    device: str = "cpu"
    episodes: int = 10  # evaluation episodes, run as one vector env
    max_steps: int = 0  # evaluation episode cap (0: the env's own limit)
    video: bool = True
    threads: int = 1  # torch CPU threads
    mpc: MPCSettings = field(default_factory=MPCSettings)
    learn: ModelSettings = field(default_factory=ModelSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)

    def validate(self) -> None:
        if self.env not in TASK_MODELS:
            raise ValueError(f"unknown env {self.env!r}; choose from {', '.join(TASK_MODELS)}")
        if self.planner not in PLANNERS:
            raise ValueError(f"unknown planner {self.planner!r}; choose from "
                             f"{', '.join(PLANNERS)}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.model == "true" and not TASK_MODELS[self.env].has_dynamics:
            raise ValueError(f"--model true needs closed-form dynamics, which {self.env} does "
                             "not have; use --model ensemble or cvae")
        if self.episodes < 1:
            raise ValueError(f"episodes must be at least 1, got {self.episodes}")
        if self.loop.rounds < 0 or self.loop.random_steps < 1:
            raise ValueError("loop.rounds must be >= 0 and loop.random_steps >= 1")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        resolve_settings(self.mpc, self.planner, TASK_MODELS[self.env].planning)


def model_hidden(config: MujocoConfig) -> int:
    """Hidden width of the world model: the config's, else the env's default."""
    return config.learn.hidden or ENV_DEFAULTS.get(config.env, {}).get("hidden", 128)


def shown_defaults(config: MujocoConfig) -> MujocoConfig:
    """``config`` with the per-env and per-planner defaults (0, -1, "auto") filled in as
    the stages will use them, for ``--help``."""
    if config.env not in TASK_MODELS or config.planner not in PLANNERS:
        return config
    limit = gym.spec(config.env).max_episode_steps or 0
    return replace(
        config, mpc=resolve_settings(config.mpc, config.planner,
                                     TASK_MODELS[config.env].planning),
        learn=replace(config.learn, hidden=model_hidden(config)),
        max_steps=config.max_steps or limit,
        loop=replace(config.loop, max_episode_steps=config.loop.max_episode_steps or limit))


# ------------------------------------------------------------------------------ models
def _new_model(config: MujocoConfig, tm: GymTaskModel):
    s, a, m = tm.state_dim, tm.action_dim, config.learn
    hidden = model_hidden(config)
    if config.model == "ensemble":
        return Ensemble(s, a, k=m.k, hidden=hidden, layers=m.layers, dropout=m.dropout)
    return DeterministicModel(s, a, hidden=hidden, layers=m.layers, dropout=m.dropout)


def train_world_model(config: MujocoConfig, episodes: list[dict[str, np.ndarray]], run: Run,
                      round_index: int):
    """Write the episodes as a data set, train a fresh model on it, save ``model.pt``."""
    tm = make_task_model(config.env)
    path = write_dataset(run.data / "dataset", episodes, task=f"mujoco/{config.env}",
                         dt=tm.dt, config=asdict(config.loop), seed=config.seed,
                         split={"train": 0.9, "val": 0.1, "test": 0.0}, overwrite=True)
    ds = load_dataset(path)
    m = config.learn
    tc = TrainConfig(epochs=m.epochs, batch_size=m.batch_size, lr=m.lr, npred=m.npred,
                     seed=config.seed + round_index, device=config.device, log_every=1000)
    torch.manual_seed(config.seed + 1000 * round_index)
    ckpt = run.checkpoints / f"round{round_index}"
    if config.model == "cvae":
        det = _new_model(config, tm)
        model, _ = train_stochastic(det, ds, tc, tc, checkpoint_dir=ckpt, progress=False,
                                    z_dim=m.z_dim)
    else:
        model = _new_model(config, tm)
        train_model(model, ds, tc, checkpoint_dir=ckpt, progress=False,
                    tag=f"model/round{round_index}")
    save_checkpoint(run.checkpoints / "model.pt", {**model.to_checkpoint(),
                                                    "round": round_index})
    return model.eval()


def load_world_model(run: Run, device: torch.device):
    path = run.checkpoints / "model.pt"
    if not path.is_file():
        raise UserError(f"no trained model at {path}; run `worldplan mujoco "
                                "train-model` first (or use --model true)")
    return load_model(path, device=device)


def make_planner(config: MujocoConfig, run: Run | None, device: torch.device,
                 model=None) -> Planner:
    """The configured planner, with the true dynamics or the run's trained world model."""
    tm = make_task_model(config.env)
    auto = config.mpc.terminal == "auto"
    settings = resolve_settings(config.mpc, config.planner, tm.planning)
    if config.model == "true":
        dynamics, latent, uncertainty = tm.step, 0, None
    else:
        if model is None:
            model = load_world_model(run, device)
        dynamics, latent, uncertainty = model_dynamics(model.to(device))
    terminal = None
    if settings.terminal == "lqr" and latent and not auto:
        raise UserError("mpc.terminal=lqr needs a model without a latent (not the cVAE)")
    if settings.terminal == "lqr" and not latent:
        terminal = lqr_terminal_cost(dynamics, tm, settings.terminal_r, device)
    return build_planner(config.planner, dynamics, tm, settings, tm.planning, config.seed,
                         latent, uncertainty, terminal)


# ------------------------------------------------------------------------------ data
def _episode_from(result_transitions: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    obs, act, nxt = (result_transitions[k] for k in ("obs", "action", "next_obs"))
    if len(act) == 0:
        return None
    return {"states": np.concatenate([obs, nxt[-1:]]).astype(np.float32),
            "actions": act.astype(np.float32), "costs": -result_transitions["reward"]
            .astype(np.float32)}


def random_episodes(env_id: str, steps: int, seed: int, max_episode_steps: int = 0
                    ) -> list[dict[str, np.ndarray]]:
    """Uniform random-action episodes totalling ``steps`` environment steps."""
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    episodes, done_steps, k = [], 0, 0

    def act(_obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high).astype(np.float32)[None]

    def step(action: np.ndarray, _alive: np.ndarray) -> Transition:
        obs, r, term, trunc, _ = env.step(action[0])
        return Transition(np.asarray(obs)[None], np.array([r]), np.array([term]),
                          np.array([trunc]))

    bar = tqdm(total=steps, desc="random data", leave=False)
    while done_steps < steps:
        limit = min(steps - done_steps, max_episode_steps or 10**9)
        episode_seed = seed + k
        k += 1
        loop = run_episodes(lambda s=episode_seed: np.asarray(env.reset(seed=s)[0])[None],
                            step, act, 1, limit, record=("obs", "action", "reward", "next_obs"))
        n = int(loop.lengths[0])
        done_steps += n
        bar.update(n)
        rec = loop.records  # [n, 1, ...]: one episode, at least one step
        episodes.append({"states": np.concatenate([rec["obs"][:1, 0], rec["next_obs"][:, 0]]
                                                  ).astype(np.float32),
                         "actions": rec["action"][:, 0].astype(np.float32),
                         "costs": -rec["reward"][:, 0].astype(np.float32)})
    bar.close()
    env.close()
    return episodes


def save_episodes(path: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    """All episodes in one ``.npz`` (concatenated, with lengths), written atomically."""
    buf = io.BytesIO()
    lengths = np.array([len(e["actions"]) for e in episodes], dtype=np.int64)
    np.savez(buf, lengths=lengths,
             states=np.concatenate([e["states"] for e in episodes]),
             actions=np.concatenate([e["actions"] for e in episodes]),
             costs=np.concatenate([e["costs"] for e in episodes]))
    atomic_write_bytes(path, buf.getvalue())


def load_episodes(path: Path) -> list[dict[str, np.ndarray]]:
    if not path.is_file():
        raise UserError(f"no collected data at {path}; run `worldplan mujoco collect`")
    with np.load(path) as data:
        lengths, states, actions, costs = (data[k] for k in ("lengths", "states", "actions",
                                                             "costs"))
    episodes, s0, a0 = [], 0, 0
    for n in lengths:
        episodes.append({"states": states[s0:s0 + n + 1], "actions": actions[a0:a0 + n],
                         "costs": costs[a0:a0 + n]})
        s0 += n + 1
        a0 += n
    return episodes


# ------------------------------------------------------------------------------ stages
def _setup(config: MujocoConfig) -> torch.device:
    config.validate()
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    return resolve_device(config.device)


def _loop_outputs(run: Run) -> list[Path]:
    """What train-model writes: the loop's data and state, the models, the curve."""
    return [run.data / LOOP_DATA, run.path / "loop_state.json", run.checkpoints / "model.pt",
            *run.checkpoints.glob("round*"), run.figures / "learning_curve.png"]


def collect(config: MujocoConfig, run: Run) -> None:
    _setup(config)
    path = run.data / RANDOM_DATA
    run.start_fresh(path)
    if config.model == "true":
        log.info("--model true: no data needed")
        return
    if run.resume and path.is_file():
        log.info("resume: keeping the collected data in %s", path)
        return
    episodes = random_episodes(config.env, config.loop.random_steps, config.seed,
                               config.loop.max_episode_steps)
    save_episodes(path, episodes)
    steps = sum(len(e["actions"]) for e in episodes)
    returns = [-float(e["costs"].sum()) for e in episodes]
    run.update_metrics("collect", {"env_steps": steps, "episodes": len(episodes),
                                   "random_mean_return": float(np.mean(returns))})
    log.info("collected %d random steps in %d episodes", steps, len(episodes))


def train(config: MujocoConfig, run: Run) -> None:
    """The model-based loop (see the module docstring)."""
    device = _setup(config)
    if config.model == "true":
        run.start_fresh(*_loop_outputs(run))
        log.info("--model true: nothing to train")
        return
    # collect's random data stay as it wrote them; the loop keeps the random and MPC
    # episodes it has so far in LOOP_DATA, saved with its state after every round
    data_path = run.data / LOOP_DATA
    state_path = run.path / "loop_state.json"
    state: dict[str, Any] = {"round": 0, "curve": []}
    if run.resume and state_path.is_file() and data_path.is_file():
        state = json.loads(state_path.read_text())
        log.info("resume: continuing the loop at round %d", state["round"])
        episodes = load_episodes(data_path)
    else:
        episodes = load_episodes(run.data / RANDOM_DATA)  # inputs before removing outputs
        run.start_fresh(*_loop_outputs(run))
    writer = run.writer()
    env = make_env(config.env)
    loop = config.loop
    env_steps = sum(len(e["actions"]) for e in episodes)
    rng = np.random.default_rng(config.seed + 17)
    explore = None
    if loop.exploration > 0:
        half = (env.action_space.high - env.action_space.low) / 2

        def explore(action: np.ndarray, _rng: np.random.Generator) -> np.ndarray:
            return action + loop.exploration * half * rng.standard_normal(action.shape)
    for rnd in range(state["round"], loop.rounds + 1):
        t0 = time.perf_counter()
        model = train_world_model(config, episodes, run, rnd).to(device)
        train_s = time.perf_counter() - t0
        if rnd == loop.rounds:
            state = {"round": rnd + 1, "curve": state["curve"]}
            atomic_write_text(state_path, json.dumps(state) + "\n")
            break
        planner = make_planner(config, run, device, model=model)
        ctrl = RecedingHorizonController(planner, device=device, exploration=explore)
        collected, returns, plan_ms = 0, [], []
        k = 0
        while collected < loop.steps_per_round:
            cap = min(loop.steps_per_round - collected, loop.max_episode_steps or 10**9)
            res = ctrl.run(env, seed=config.seed + 1000 * (rnd + 1) + k, max_steps=cap,
                           record=True, rng=rng)
            k += 1
            ep = _episode_from(res.transitions)
            if ep is None:
                break
            episodes.append(ep)
            collected += len(ep["actions"])
            env_steps += len(ep["actions"])
            limit = env.spec.max_episode_steps or 10**9
            if res.lengths[0] < cap or cap >= limit:  # not cut short by the round's budget
                returns.append(float(res.returns[0]))
                writer.add_scalar("mujoco/return", returns[-1], env_steps)
            plan_ms.append(res.mean_plan_ms)
            writer.add_scalar("mujoco/plan_ms", plan_ms[-1], env_steps)
        returns = returns or [float("nan")]
        point = {"round": rnd, "env_steps": env_steps, "mean_return": float(np.mean(returns)),
                 "max_return": float(np.max(returns)), "episodes": len(returns),
                 "plan_ms": float(np.mean(plan_ms)), "train_s": train_s}
        log.info("round %d: %d env steps, return %.1f (max %.1f), %.1f ms/step", rnd,
                 env_steps, point["mean_return"], point["max_return"], point["plan_ms"])
        writer.add_scalar("mujoco/round_mean_return", point["mean_return"], env_steps)
        state = {"round": rnd + 1, "curve": state["curve"] + [point]}
        save_episodes(data_path, episodes)
        atomic_write_text(state_path, json.dumps(state) + "\n")
    env.close()
    total = sum(len(e["actions"]) for e in episodes)
    run.update_metrics("train", {"env_steps": total, "curve": state["curve"]})
    with run.optional_artefact("the learning curve"):
        _curve_figure(state["curve"], config, run)


def _curve_figure(curve: list[dict[str, Any]], config: MujocoConfig, run: Run) -> None:
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p["env_steps"] for p in curve], [p["mean_return"] for p in curve], "o-",
            label=f"{config.planner} + {config.model}")
    ax.set_xlabel("environment steps of data")
    ax.set_ylabel("episode return (MPC, real env)")
    ax.set_title(config.env)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, run.figures / "learning_curve.png")


def evaluate(config: MujocoConfig, run: Run) -> None:
    """The planner alone over ``episodes`` seeded episodes in one vector env."""
    device = _setup(config)
    planner = make_planner(config, run, device)
    # the video of this record (its name has the planner, which may have changed)
    run.start_fresh(*run.videos.glob(f"{config.env}_*.mp4"))
    venv = make_vector_env(config.env, config.episodes)
    ctrl = RecedingHorizonController(planner, device=device)
    probe = make_env(config.env)
    max_steps = config.max_steps or probe.spec.max_episode_steps
    probe.close()
    result = ctrl.run(venv, seed=config.seed, max_steps=max_steps)
    venv.close()
    data_steps = 0 if config.model == "true" else run.metrics().get("train", {}).get(
        "env_steps", 0)
    metrics = {"env": config.env, "planner": config.planner, "model": config.model,
               "mean_return": float(result.returns.mean()),
               "std_return": float(result.returns.std()),
               "min_return": float(result.returns.min()),
               "returns": [float(r) for r in result.returns],
               "episodes": config.episodes, "env_steps": int(data_steps),
               "eval_env_steps": result.env_steps,
               "plan_ms_per_step_batch": result.mean_plan_ms,
               "plan_ms_per_episode_step": result.mean_plan_ms / config.episodes}
    log.info("%s %s/%s: return %.1f +- %.1f over %d episodes (%.1f ms per batched step)",
             config.env, config.planner, config.model, metrics["mean_return"],
             metrics["std_return"], config.episodes, result.mean_plan_ms)
    run.update_metrics("evaluate", metrics)  # before the optional video
    if config.video:
        with run.optional_artefact("the video"):
            env = make_env(config.env, render_mode="rgb_array")
            planner.reset()
            try:
                one = ctrl.run(env, seed=config.seed, max_steps=max_steps, render=True)
            finally:
                env.close()
            fps = int(round(1.0 / make_task_model(config.env).dt)) if config.env else 30
            path = write_video(one.frames, run.videos / f"{config.env}_{config.planner}.mp4",
                               fps=min(fps, 50))
            run.update_metrics("evaluate", {"video": path, "video_return": float(one.returns[0]),
                                            "plan_ms_batch1": one.mean_plan_ms})


def _default() -> MujocoConfig:
    return MujocoConfig()


def _quick() -> MujocoConfig:
    return MujocoConfig(episodes=2, max_steps=50, video=False,
                        mpc=MPCSettings(horizon=10, samples=100, elites=10, iterations=2),
                        learn=ModelSettings(hidden=64, k=2, epochs=3),
                        loop=LoopSettings(random_steps=200, rounds=1, steps_per_round=100,
                                          max_episode_steps=50))


TASK = register_task(Task(
    name="mujoco",
    config_cls=MujocoConfig,
    presets={"default": _default, "quick": _quick},
    stages={"collect": collect, "train-model": train, "evaluate": evaluate},
    description=__doc__.split("Examples::")[0] if __doc__ else "",
    resumable=("collect", "train-model"),
    # env, model and the seed, listed by none, are read by every stage
    sections={"collect": ("loop.random_steps", "loop.max_episode_steps"),
              "train-model": ("loop", "learn", "planner", "mpc"),
              "evaluate": ("planner", "mpc", "episodes", "max_steps", "video")},
    shown_defaults=shown_defaults,
    help_note="Defaults that depend on the env and planner are shown for --env {config.env} "
              "--planner {config.planner};\ngive those flags with --help to see another's.",
))

__all__ = ["TASK", "MujocoConfig", "make_planner",
           "random_episodes"]

