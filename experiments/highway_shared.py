"""What the highway's stages share: the run's data set and world models, the policy cost
and the model-based learners' uncertainty and latent functions, and the policy
checkpoints (saved in the one policy format, loaded only under the configuration they
were trained with).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldplan.checkpoint import CheckpointError
from worldplan.envs.highway.costs import image_costs_torch, masks_torch
from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.envs.highway.render import View
from worldplan.errors import UserError
from worldplan.experiments.highway_config import (
    DATASET_TASK,
    METHOD_MODEL,
    MODEL_DIRS,
    PROXIMITY_FORMS,
    HighwayConfig,
)
from worldplan.experiments.highway_policy_net import ContextPolicy
from worldplan.experiments.runs import Run
from worldplan.planners.policy.checkpoint import check_policy, load_policy, read_policy
from worldplan.worldmodels.base import load_model
from worldplan.worldmodels.contract import ModelState
from worldplan.worldmodels.dataset import load_dataset
from worldplan.worldmodels.images import ImageModel, to_unit
from worldplan.worldmodels.uncertainty import mc_uncertainty


def set_threads(config: HighwayConfig) -> None:
    if config.threads < 1:
        raise UserError(f"threads must be >= 1, got {config.threads}")
    torch.set_num_threads(config.threads)


def open_dataset(run: Run):
    """The run's data set; a clear error when it is missing or made for another task."""

    path = run.data / "dataset"
    ds = load_dataset(path, check_finite=False)
    if ds.task != DATASET_TASK:
        raise UserError(f"data set {path} was made for task {ds.task!r}, not {DATASET_TASK!r}")
    if ds.image_shape is None:
        raise UserError(f"data set {path} holds no images; run `worldplan highway collect`")
    return ds


def recorded_ids(ds, split: str) -> list[int]:
    """Episode ids of ``split`` that are recorded cars (not counterfactual drives)."""
    kinds = ds.manifest["generator"]["config"].get("kinds")
    ids = ds.episode_ids(split)
    return ids if kinds is None else [i for i in ids if kinds[i] == "recorded"]


def model_path(run: Run, which: str) -> Path:
    return run.checkpoints / MODEL_DIRS[which] / "best.pt"


def load_world_model(run: Run, which: str, ds, device: torch.device):
    """A trained ImageModel of this run, checked against the data set."""

    path = model_path(run, which)
    if not path.is_file():
        raise CheckpointError(f"{which} world model not found: {path} "
                              "(run `worldplan highway train-model` first)")
    model = load_model(path, device)
    if not isinstance(model, ImageModel):
        raise CheckpointError(f"{path} holds a {model.kind}, expected an ImageModel")
    if tuple(model.image_shape) != tuple(ds.image_shape) or model.state_dim != ds.state_dim:
        raise CheckpointError(f"{path} was trained on images {list(model.image_shape)} and "
                              f"{model.state_dim}-D states; the data set has "
                              f"{list(ds.image_shape)} and {ds.state_dim}-D states")
    if which == "stochastic" and not model.z_dim:
        raise CheckpointError(f"{path} is not a stochastic model (z_dim = 0)")
    return model


def cost_fn(view: View, weight_lane: float, proximity: str = "max"):
    """The policy cost ``(images [B, C, H, W], states [B, 4]) -> [B]``: proximity + lane x
    ``weight_lane`` + off-road. ``proximity``: ``"max"`` is PPUU's max over the whole
    mask (only the nearest car counts); ``"front-rear"`` adds the max over the half of
    the mask ahead of the ego's centre and the max over the half behind, so a follower
    closing in is not hidden by a nearer leader (and the reverse)."""

    if proximity not in PROXIMITY_FORMS:
        raise UserError(f"proximity must be one of {PROXIMITY_FORMS}, got {proximity!r}")
    fwd = torch.as_tensor(np.ascontiguousarray(view.pixel_grid()[0]), dtype=torch.float32)

    def cost(images: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        c = image_costs_torch(images, states, view)
        prox = c["proximity"]
        if proximity == "front-rear":
            masked = masks_torch(states, view)["proximity"] * images[:, 1]
            ahead = fwd.to(images) >= 0
            prox = (masked * ahead).flatten(1).amax(1) + (masked * ~ahead).flatten(1).amax(1)
        return prox + weight_lane * c["lane"] + c["offroad"]

    return cost


def local_uncertainty(mc, model, view: View) -> torch.Tensor:
    """U ``[B, T]`` from MC-dropout statistics: the state variance (delta-std units) plus
    the cars channel's pixel variance averaged under the proximity mask of the predicted
    state. Why local: averaged over the whole 72 m x 15 m view, U is lowest where the
    view holds the fewest cars, and a policy trained against it learned to steer and
    speed so as to pull empty road in at the image borders."""

    b, t = mc.mean.shape[:2]
    mask = masks_torch(mc.mean.flatten(0, 1).detach(), view)["proximity"].view(
        b, t, view.height, view.width)
    var = mc.image_var[:, :, 1]
    pixels = (mask * var).flatten(2).sum(-1) / mask.flatten(2).sum(-1).clamp_min(1.0)
    return (mc.var / model.delta_std**2).sum(-1) + pixels


def uncertainty_fn(model, n: int, view: View):

    base = model.model if isinstance(model, LastContext) else model

    def u(context: torch.Tensor, frames: torch.Tensor, actions: torch.Tensor,
          z: torch.Tensor | None) -> torch.Tensor:
        # one sampled network per MC sample for the whole rollout: several times cheaper
        # on a CPU than fresh masks per step, and still a variance over dropout networks
        k = base.ncond
        mc = mc_uncertainty(base, base.reset(context[:, -k:], frames[:, -k:]), actions, n=n, z=z,
                            masks="trajectory")
        return local_uncertainty(mc, base, view)

    return u


def latent_fn(model):
    def latent(batch: int, steps: int) -> torch.Tensor | None:
        return model.sample_prior(batch, steps) if model.z_dim else None

    return latent


def posterior_fn(model):
    """z ``[B, T, Z]`` (posterior means) inferred from the recorded future, teacher-forced
    along the recorded context (the model's public ``posterior``)."""

    def posterior(ctx: torch.Tensor, cframes: torch.Tensor, tstates: torch.Tensor,
                  tframes: torch.Tensor) -> torch.Tensor:
        ms, zs = model.reset(ctx, cframes), []
        for t in range(tstates.shape[1]):
            nxt = model.reset(torch.cat([ms.context[:, 1:], tstates[:, t:t + 1]], 1),
                              torch.cat([ms.frames[:, 1:], to_unit(tframes[:, t:t + 1])], 1))
            zs.append(model.posterior(ms, nxt.state, nxt.image))
            ms = nxt
        return torch.stack(zs, 1)

    return posterior


class LastContext:
    """A world model fed only the last ``model.ncond`` entries of a longer policy context:
    ``reset`` slices, ``advance`` moves the long window on by the model's step from its
    last entries, ``posterior`` reads the model's latent from them; everything else
    passes through."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _last(self, ms: ModelState) -> ModelState:
        k = self.model.ncond
        return ModelState(ms.context[:, -k:], None if ms.frames is None else ms.frames[:, -k:])

    def reset(self, context: torch.Tensor, frames: torch.Tensor | None = None) -> ModelState:
        k = self.model.ncond
        return self.model.reset(context[:, -k:], None if frames is None else frames[:, -k:])

    def advance(self, ms: ModelState, action: torch.Tensor,
                z: torch.Tensor | None = None) -> ModelState:
        nxt = self.model.advance(self._last(ms), action, z)
        return ms.then(nxt.state, nxt.image)

    def posterior(self, ms: ModelState, next_state: torch.Tensor,
                  next_image: torch.Tensor | None = None) -> torch.Tensor:
        """The model's posterior ``[B, Z]`` from the last ``model.ncond`` entries of ``ms``."""
        return self.model.posterior(self._last(ms), next_state, next_image)


def oracle_fn(view: View, dt: float):
    """``batch -> ReplayOracle`` of the batch's recorded future (envs/highway/oracle.py)."""

    def make(batch: dict[str, torch.Tensor]) -> ReplayOracle:
        return ReplayOracle(batch["target_images"], batch["targets"], view.res, dt)

    return make


def sampler(windows, device: torch.device):
    def sample(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, len(windows), size=n)
        return {k: v.to(device) for k, v in windows.get_batch(idx).items()}

    return sample


def new_policy(config: HighwayConfig, ds, ncond: int):

    st = ds.stats
    p = config.policy
    motion = None
    if p.relative_motion:
        view = View(**ds.manifest["generator"]["config"]["view"])
        motion = {"channel": 1, "res": view.res, "dt": ds.dt, "min_speed": 0.2,
                  "max_speed": 20.0}
    return ContextPolicy(ds.state_dim, ds.action_dim, tuple(ds.image_shape), ncond,
                         st.state_mean, st.state_std, st.action_mean, st.action_std,
                         hidden=p.hidden, channels=tuple(p.channels), motion=motion,
                         history_channels=tuple(p.history_channels) or None)


def policy_path(run: Run, method: str, seed: int) -> Path:
    return run.checkpoints / f"policy-{method}-seed{seed}.pt"


def policy_meta(config: HighwayConfig, method: str, seed: int) -> dict:
    """What a policy checkpoint keeps beside its network's config, and what loading it
    checks: the learner, the seed, and the world-model mode it learned through (a policy
    trained through the ego-motion model has not seen the plain model's predictions)."""
    meta = {"method": method, "seed": seed, "world_model": METHOD_MODEL[method]}
    if METHOD_MODEL[method] is not None:
        meta["ego_motion"] = config.model.ego_motion
    return meta


def policy_from(cfg: dict) -> ContextPolicy:
    """The network a checkpoint's config describes (its normalisation statistics are
    buffers, restored with the weights)."""
    s, a = cfg["state_dim"], cfg["action_dim"]
    return ContextPolicy(s, a, tuple(cfg["image_shape"]), cfg["ncond"], np.zeros(s), np.ones(s),
                         np.zeros(a), np.ones(a), hidden=cfg["hidden"],
                         channels=tuple(cfg["channels"]), bound=cfg["bound"],
                         motion=cfg.get("motion"), history_channels=cfg.get("history_channels"))


def check_policy_file(config: HighwayConfig, run: Run, method: str, seed: int, ds,
                      ncond: int) -> Path:
    """The checkpoint of ``method``/``seed``, refused with one line when it is missing, of
    the older format, or of another configuration than ``config`` (context length,
    channels, ego-motion mode, ...)."""
    path = policy_path(run, method, seed)
    if not path.is_file():
        raise CheckpointError(f"policy {method!r} (seed {seed}) not found: {path} "
                              "(run `worldplan highway train-policy` first)")
    payload = read_policy(path, DATASET_TASK)
    check_policy(payload, path, new_policy(config, ds, ncond).config(),
                 policy_meta(config, method, seed))
    return path


def load_highway_policy(config: HighwayConfig, run: Run, method: str, seed: int, ds,
                        device: torch.device, ncond: int) -> ContextPolicy:
    path = check_policy_file(config, run, method, seed, ds, ncond)
    policy, _meta = load_policy(path, DATASET_TASK, lambda cfg, meta: policy_from(cfg))
    return policy.to(device).eval()
