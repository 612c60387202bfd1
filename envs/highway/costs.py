"""PPUU's image costs, in torch (differentiable, for predicted frames) and numpy (the
simulator's twin, which also decides collisions).

Images are ``[B, C, H, W]`` floats in [0, 1] (channel 0 lanes, 1 cars, 2 ego, 3 optional
off-road), in the layout of :mod:`worldplan.envs.highway.render`; states ``[B, 4]`` =
[x, y, vx, vy].
Each cost is the maximum over pixels of a mask centred on the ego times a channel:

- proximity: along the heading the mask is 1 over the ego's length and falls linearly
  to 0 over the safe distance ``1.5 s * speed + 1 m`` (speed detached); across, 1 over
  the ego's width, falling to 0 over half a lane; times the G channel;
- lane: the same shape, falling over 1 m along and 0.5 m across; times the R channel;
- off-road: the lane mask times the off-road channel (when present);
- collision: ``max(G + B) - 1`` over pixels, clipped at 0: where the other cars' and the
  ego's coverages of one pixel add to more than the pixel, the two shapes overlap in it
  (anti-aliasing makes this a sub-pixel test; > 0.25 means contact, deeper than ~0.15 m).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldplan.envs.highway.render import DEFAULT_VIEW, View


@dataclass(frozen=True)
class CostConfig:
    safe_time: float = 1.5  # s
    safe_margin: float = 1.0  # m
    lateral_falloff: float = 1.85  # m (half a lane)
    lane_long_falloff: float = 1.0  # m
    lane_lat_falloff: float = 0.5  # m
    ego_length: float = 4.8  # m, used when sizes are not given
    ego_width: float = 1.9  # m
    lane_weight: float = 0.2
    offroad_weight: float = 1.0
    collision_threshold: float = 0.25


DEFAULT_COSTS = CostConfig()


def _grid_torch(view: View, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fwd, left = view.pixel_grid()
    f = torch.as_tensor(np.abs(fwd), dtype=like.dtype, device=like.device)
    l_ = torch.as_tensor(np.abs(left), dtype=like.dtype, device=like.device)
    return f, l_


def _check(images, states, view: View) -> None:
    if images.ndim != 4 or images.shape[2:] != (view.height, view.width) or images.shape[1] < 3:
        raise ValueError(f"images must be [B, C>=3, {view.height}, {view.width}], "
                         f"got {list(images.shape)}")
    if states.ndim != 2 or states.shape[1] != 4 or states.shape[0] != images.shape[0]:
        raise ValueError(f"states must be [B, 4] with B = {images.shape[0]}, "
                         f"got {list(states.shape)}")


def _sizes_torch(sizes, b: int, cfg: CostConfig, like: torch.Tensor):
    if sizes is None:
        return (like.new_full((b,), cfg.ego_length), like.new_full((b,), cfg.ego_width))
    sizes = torch.as_tensor(sizes, dtype=like.dtype, device=like.device).reshape(b, 2)
    return sizes[:, 0], sizes[:, 1]


def _ramp_t(dist: torch.Tensor, half: torch.Tensor, falloff: torch.Tensor) -> torch.Tensor:
    """1 within ``half``, linear to 0 at ``half + falloff``; broadcasting ``[B,1,1]``."""
    return (1.0 - (dist - half) / falloff).clamp(0.0, 1.0)


def masks_torch(states: torch.Tensor, view: View = DEFAULT_VIEW, cfg: CostConfig = DEFAULT_COSTS,
                sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The proximity, lane and footprint masks ``[B, H, W]`` (no gradient to the speed)."""
    b = states.shape[0]
    f, l_ = _grid_torch(view, states)
    length, width = _sizes_torch(sizes, b, cfg, states)
    hl, hw = (length / 2)[:, None, None], (width / 2)[:, None, None]
    speed = states[:, 2:4].detach().norm(dim=1)[:, None, None]
    safe = cfg.safe_time * speed + cfg.safe_margin
    one = states.new_tensor(1.0)
    prox = _ramp_t(f, hl, safe) * _ramp_t(l_, hw, one * cfg.lateral_falloff)
    lane = _ramp_t(f, hl, one * cfg.lane_long_falloff) * _ramp_t(l_, hw, one * cfg.lane_lat_falloff)
    foot = ((f <= hl) & (l_ <= hw)).to(states.dtype)
    return {"proximity": prox, "lane": lane, "footprint": foot}


def image_costs_torch(images: torch.Tensor, states: torch.Tensor, view: View = DEFAULT_VIEW,
                      cfg: CostConfig = DEFAULT_COSTS,
                      sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Costs ``[B]`` each: ``proximity``, ``lane``, ``offroad`` (0 without the channel),
    ``collision`` (G + B overlap) and ``total`` = proximity + 0.2 lane + offroad."""
    _check(images, states, view)
    m = masks_torch(states, view, cfg, sizes)
    prox = (m["proximity"] * images[:, 1]).flatten(1).amax(1)
    lane = (m["lane"] * images[:, 0]).flatten(1).amax(1)
    off = ((m["lane"] * images[:, 3]).flatten(1).amax(1) if images.shape[1] > 3
           else torch.zeros_like(prox))
    coll = (images[:, 1] + images[:, 2] - 1.0).flatten(1).amax(1).clamp_min(0.0)
    total = prox + cfg.lane_weight * lane + cfg.offroad_weight * off
    return {"proximity": prox, "lane": lane, "offroad": off, "collision": coll, "total": total}


def _ramp_np(dist: np.ndarray, half: np.ndarray, falloff) -> np.ndarray:
    return np.clip(1.0 - (dist - half) / falloff, 0.0, 1.0)


def image_costs_np(images: np.ndarray, states: np.ndarray, view: View = DEFAULT_VIEW,
                   cfg: CostConfig = DEFAULT_COSTS, sizes: np.ndarray | None = None,
                   channels_last: bool = False) -> dict[str, np.ndarray]:
    """The numpy twin of :func:`image_costs_torch`. ``images`` ``[B, C, H, W]`` floats in
    [0, 1], or uint8 (divided by 255); ``channels_last`` for ``[B, H, W, C]``."""
    images = np.asarray(images)
    if channels_last:
        images = np.moveaxis(images, -1, 1)
    images = images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images
    states = np.asarray(states, np.float64)
    _check(images, states, view)
    b = len(states)
    fwd, left = view.pixel_grid()
    f, l_ = np.abs(fwd)[None], np.abs(left)[None]
    if sizes is None:
        length, width = np.full(b, cfg.ego_length), np.full(b, cfg.ego_width)
    else:
        sizes = np.asarray(sizes, np.float64).reshape(b, 2)
        length, width = sizes[:, 0], sizes[:, 1]
    hl, hw = (length / 2)[:, None, None], (width / 2)[:, None, None]
    speed = np.linalg.norm(states[:, 2:4], axis=1)[:, None, None]
    safe = cfg.safe_time * speed + cfg.safe_margin
    prox_m = _ramp_np(f, hl, safe) * _ramp_np(l_, hw, cfg.lateral_falloff)
    lane_m = _ramp_np(f, hl, cfg.lane_long_falloff) * _ramp_np(l_, hw, cfg.lane_lat_falloff)
    prox = (prox_m * images[:, 1]).reshape(b, -1).max(1)
    lane = (lane_m * images[:, 0]).reshape(b, -1).max(1)
    off = (lane_m * images[:, 3]).reshape(b, -1).max(1) if images.shape[1] > 3 else np.zeros(b)
    coll = np.maximum((images[:, 1] + images[:, 2] - 1.0).reshape(b, -1).max(1), 0.0)
    total = prox + cfg.lane_weight * lane + cfg.offroad_weight * off
    return {"proximity": prox, "lane": lane, "offroad": off, "collision": coll, "total": total}
