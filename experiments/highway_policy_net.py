"""The highway's policy network, on image + vector contexts (PPUU's setting).

A :class:`ContextPolicy` maps the last ``ncond`` ego frames ``[B, ncond, C, H, W]`` (float
in [0, 1]) and states ``[B, ncond, S]`` (raw units) to an action ``[B, A]`` in raw units:
``action_mean + action_std * bound * tanh(net)``, so it stays within ``bound`` standard
deviations of the expert's actions. Normalisation statistics are buffers, so a
checkpoint (``state_dict`` + :meth:`config`, saved by
:func:`worldplan.planners.policy.checkpoint.save_policy` under the class name
``"ContextPolicy"``) is self-contained.

With ``motion`` (ego-centred frames and ``[x, y, vx, vy]`` states only), the network also
sees, per pixel of one channel (the other cars), their forward speed relative to the
ego, measured between the last two frames by
:func:`worldplan.worldmodels.ego_motion.context_flow`. Why: a car closing in at 1 m/s
moves 0.16 px between two frames 0.1 s apart, which a small CNN trained for minutes does
not pick up; car-following needs that closing speed.

The learners that train it (imitation, BPTT through a world model, MPUR, MPER) are
generic: they live in :mod:`worldplan.planners.policy` and take any policy of the
context.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from worldplan.planners.policy.imitation import unit_frames
from worldplan.worldmodels.ego_motion import context_flow, flow_shifts


class ContextPolicy(nn.Module):
    """``(states [B, ncond, S], frames [B, ncond, C, H, W]) -> actions [B, A]``."""

    def __init__(self, state_dim: int, action_dim: int, image_shape: tuple[int, int, int],
                 ncond: int, state_mean: Any, state_std: Any, action_mean: Any, action_std: Any,
                 hidden: int = 128, channels: tuple[int, ...] = (8, 16, 32),
                 bound: float = 3.0, motion: dict[str, float] | None = None,
                 history_channels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if ncond < 1 or state_dim < 1 or action_dim < 1:
            raise ValueError(f"ncond, state_dim and action_dim must be >= 1, got "
                             f"{ncond}, {state_dim}, {action_dim}")
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        self.motion = _check_motion(motion, ncond, state_dim, image_shape)
        c, h, w = image_shape
        if history_channels is not None:
            history_channels = tuple(int(k) for k in history_channels)
            if not history_channels or not all(0 <= k < c for k in history_channels):
                raise ValueError(f"history_channels must be channels of the {c}-channel "
                                 f"image, got {history_channels}")
        self.history = history_channels
        self.cfg = {"state_dim": state_dim, "action_dim": action_dim,
                    "image_shape": [int(v) for v in image_shape], "ncond": ncond,
                    "hidden": hidden, "channels": list(channels), "bound": bound,
                    "motion": self.motion,
                    "history_channels": None if self.history is None else list(self.history)}
        layers: list[nn.Module] = []
        per_old = c if self.history is None else len(self.history)
        cin = c + (ncond - 1) * per_old + (1 if self.motion else 0)
        for co in channels:
            layers += [nn.Conv2d(cin, co, 3, stride=2, padding=1), nn.ReLU()]
            cin = co
            h, w = (h + 1) // 2, (w + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.image_fc = nn.Linear(cin * h * w, hidden)
        self.state_fc = nn.Linear(ncond * state_dim, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, action_dim))
        for name, value, dim in (("state_mean", state_mean, state_dim),
                                 ("state_std", state_std, state_dim),
                                 ("action_mean", action_mean, action_dim),
                                 ("action_std", action_std, action_dim)):
            t = torch.as_tensor(np.asarray(value, np.float32)).reshape(-1)
            if t.shape != (dim,):
                raise ValueError(f"{name} must have {dim} entries, got {list(t.shape)}")
            self.register_buffer(name, t)
        self.bound = float(bound)
        if self.motion:

            m = self.motion
            self.register_buffer("flow_shifts", flow_shifts(m["max_speed"], m["dt"], m["res"]),
                                 persistent=False)

    def config(self) -> dict[str, Any]:
        return dict(self.cfg)

    def forward(self, states: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        ncond, s_dim = self.cfg["ncond"], self.cfg["state_dim"]
        if states.ndim != 3 or states.shape[1:] != (ncond, s_dim):
            raise ValueError(f"states must be [B, {ncond}, {s_dim}], got {list(states.shape)}")
        shape = tuple(self.cfg["image_shape"])
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (ncond, *shape):
            raise ValueError(f"frames must be [B, {ncond}, {', '.join(map(str, shape))}], "
                             f"got {list(frames.shape)}")
        unit = unit_frames(frames)
        if self.history is None or ncond == 1:
            x = unit.flatten(1, 2)
        else:  # older frames: only the channels that change (e.g. the other cars)
            x = torch.cat([unit[:, :-1, list(self.history)].flatten(1, 2), unit[:, -1]], 1)
        if self.motion:
            x = torch.cat([x, self._relative_speed(states, unit)], 1)
        feat = self.image_fc(self.conv(x).flatten(1))
        s = ((states - self.state_mean) / self.state_std).flatten(1)
        out = self.head(feat + self.state_fc(s))
        return self.action_mean + self.action_std * self.bound * torch.tanh(out / self.bound)

    def normalised(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mean) / self.action_std

    def _relative_speed(self, states: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]``: (other car's forward speed - ego speed) / 5 m/s, times the
        channel's coverage (zero where there is no car)."""

        m = self.motion
        cur, flow = context_flow(states, frames, int(m["channel"]), m["res"], m["min_speed"],
                                 self.flow_shifts)
        ego = states[:, -1, 2:].norm(dim=1)[:, None, None, None]
        return (flow * (m["res"] / m["dt"]) - ego) / 5.0 * cur.detach()


MOTION_KEYS = ("channel", "res", "dt", "min_speed", "max_speed")


def _check_motion(motion: dict[str, float] | None, ncond: int, state_dim: int,
                  image_shape: tuple[int, int, int]) -> dict[str, float] | None:
    if not motion:
        return None
    missing = sorted(set(MOTION_KEYS) - set(motion))
    if missing:
        raise ValueError(f"motion needs {list(MOTION_KEYS)}; missing {missing}")
    if ncond < 2 or state_dim != 4:
        raise ValueError("motion measures the other cars between two frames: it needs "
                         f"ncond >= 2 and [x, y, vx, vy] states, got ncond {ncond}, "
                         f"state_dim {state_dim}")
    if not 0 <= int(motion["channel"]) < image_shape[0]:
        raise ValueError(f"motion channel {motion['channel']} outside the image's "
                         f"{image_shape[0]} channels")
    return {k: float(motion[k]) for k in MOTION_KEYS}
