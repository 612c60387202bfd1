"""An image world model whose ego motion is exact: the network predicts only how the
other cars move; the ego's own motion is the kinematic update plus a differentiable
image warp.

Why: trained for minutes on a CPU, :class:`~worldmodels.images.ImageModel` does not learn
that an ego-centred scene shifts with the ego's speed (measured on the highway data: +-2
m/s^2 for 1.5 s moved the ego 2.3 m, i.e. 3.6 px, and left the predicted frames
unchanged), so a policy trained through it gets no gradient from the distances to the
other cars. Here:

1. every context frame is warped from its own ego pose into the pose of the last one,
   so the context shows the other cars moving in one fixed frame;
2. the network predicts, from those frames alone, the next frame in that fixed frame:
   it never sees the ego's actions or states, so the other cars cannot react to the
   ego's future actions (they do not in the evaluation's replays). Its prior is that
   the other cars move together at a flow velocity (a head on the same features,
   initialised to ``flow_speed`` straight ahead: in dense traffic everybody moves
   with the flow, and a network that starts from "nothing moves" learns the motion
   slowly), plus a per-pixel residual;
3. the next ego state is the kinematic update of the action
   (``envs.highway.kinematics.step_state_torch``), and the predicted frame is warped
   into the next ego pose, with gradients to the action through the pose.

Poses come from the states ``[x, y, vx, vy]``: the position and the heading of the
velocity (``+x`` below ``min_speed``, as the renderer does). Channel ``ego_channel`` (the
ego's own footprint, always at the centre) is carried over unwarped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.images import ImageModel, to_unit


def headings(vel: torch.Tensor, min_speed: float) -> torch.Tensor:
    """Unit headings ``[..., 2]`` of velocities ``[..., 2]``; ``+x`` below ``min_speed``."""
    speed = vel.norm(dim=-1, keepdim=True)
    unit = vel / speed.clamp_min(1e-6)
    fallback = torch.zeros_like(vel)
    fallback[..., 0] = 1.0
    return torch.where(speed > min_speed, unit, fallback)


def warp_frames(frames: torch.Tensor, pos_from: torch.Tensor, head_from: torch.Tensor,
                pos_to: torch.Tensor, head_to: torch.Tensor, res: float) -> torch.Tensor:
    """Re-project ego-centred frames ``[B, C, H, W]`` seen from poses ``(pos_from,
    head_from)`` ``[B, 2]`` into poses ``(pos_to, head_to)`` (bilinear; rows along the
    heading with row 0 ahead, columns with column 0 on the left, ``res`` m per pixel)."""
    _, _, h, w = frames.shape
    n_from = torch.stack([-head_from[:, 1], head_from[:, 0]], 1)
    n_to = torch.stack([-head_to[:, 1], head_to[:, 0]], 1)
    d = pos_to - pos_from

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(1)

    # source normalised coords as an affine map of the output's (x', y'); see the
    # docstring's axes: x_norm = -2 left / (res W), y_norm = -2 forward / (res H)
    theta = torch.stack([
        torch.stack([dot(n_to, n_from), dot(head_to, n_from) * h / w,
                     -2.0 * dot(d, n_from) / (res * w)], 1),
        torch.stack([dot(n_to, head_from) * w / h, dot(head_to, head_from),
                     -2.0 * dot(d, head_from) / (res * h)], 1)], 1)
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


class EgoMotionImageModel(ImageModel):
    """:class:`ImageModel` with exact ego motion (see the module doc). Extra config:
    ``res`` (m per pixel), ``dt`` (s), ``ego_length`` (m, for the steering limit),
    ``ego_channel``, ``cars_channel`` (the channel that moves with the flow; the others,
    lanes and off-road, are static), ``min_speed`` (m/s), ``flow_speed`` (m/s)."""

    kind = "EgoMotionImageModel"

    def __init__(self, *args: Any, res: float = 0.617, dt: float = 0.1,
                 ego_length: float = 4.8, ego_channel: int = 2, cars_channel: int = 1,
                 min_speed: float = 0.2, flow_speed: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.state_dim != 4 or self.action_dim != 2:
            raise ValueError(f"{self.kind} needs [x, y, vx, vy] states and [a, b] actions, "
                             f"got state_dim {self.state_dim}, action_dim {self.action_dim}")
        for name, ch in (("ego_channel", ego_channel), ("cars_channel", cars_channel)):
            if not 0 <= ch < self.image_shape[0]:
                raise ValueError(f"{name} {ch} outside the image's {self.image_shape[0]} "
                                 "channels")
        if not (res > 0 and dt > 0 and ego_length > 0):
            raise ValueError(f"res, dt and ego_length must be > 0, got {res}, {dt}, {ego_length}")
        self.res, self.dt, self.ego_length = float(res), float(dt), float(ego_length)
        self.ego_channel, self.min_speed = int(ego_channel), float(min_speed)
        self.cars_channel, self.flow_speed = int(cars_channel), float(flow_speed)
        # the network sees neither the actions nor the states
        del self.action_embed, self.state_encoder, self.state_head
        # flow velocity of the other cars (forward, left; m/s in the current ego frame)
        self.flow_head = nn.Linear(self.hidden, 2)
        nn.init.zeros_(self.flow_head.weight)
        with torch.no_grad():
            self.flow_head.bias.copy_(torch.tensor([self.flow_speed, 0.0]))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "res": self.res, "dt": self.dt,
                "ego_length": self.ego_length, "ego_channel": self.ego_channel,
                "cars_channel": self.cars_channel, "min_speed": self.min_speed,
                "flow_speed": self.flow_speed}

    # -- geometry ------------------------------------------------------------------
    def _warp(self, frames: torch.Tensor, s_from: torch.Tensor, s_to: torch.Tensor,
              flow: torch.Tensor | None = None) -> torch.Tensor:
        """``frames [N, C, H, W]`` seen from states ``s_from [N, 4]`` -> seen from ``s_to``;
        the ego channel is kept; with ``flow`` ``[N, 2]`` (metres forward and left in the
        ``s_from`` frame), the cars channel also moves by it."""
        h_from = headings(s_from[:, 2:], self.min_speed)
        h_to = headings(s_to[:, 2:], self.min_speed)
        out = warp_frames(frames, s_from[:, :2], h_from, s_to[:, :2], h_to, self.res)
        if flow is not None:
            n_from = torch.stack([-h_from[:, 1], h_from[:, 0]], 1)
            moved = s_to[:, :2] - flow[:, :1] * h_from - flow[:, 1:] * n_from
            cars = warp_frames(frames[:, self.cars_channel:self.cars_channel + 1],
                               s_from[:, :2], h_from, moved, h_to, self.res)
            out = torch.cat([out[:, :self.cars_channel], cars,
                             out[:, self.cars_channel + 1:]], 1)
        keep = torch.zeros(frames.shape[1], dtype=torch.bool, device=frames.device)
        keep[self.ego_channel] = True
        return torch.where(keep[None, :, None, None], frames, out)

    def align(self, context: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Context frames ``[B, ncond, C, H, W]`` warped into the last context pose."""
        b, n = frames.shape[:2]
        if n == 1:
            return frames
        last = context[:, -1:].expand(b, n, 4)
        out = self._warp(frames.flatten(0, 1), context.flatten(0, 1), last.flatten(0, 1))
        return out.view_as(frames)

    def kinematics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        from envs.highway.kinematics import step_state_torch

        return step_state_torch(state, action, self.ego_length, self.dt)

    # -- the model -----------------------------------------------------------------
    def _features(self, context: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(self.align(context, frames).flatten(1, 2))

    def _next(self, context: torch.Tensor, frames: torch.Tensor, action: torch.Tensor,
              h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next state (kinematics) and frame (the fixed-frame prediction, warped)."""
        fixed = frames[:, -1] + self.image_head(h)
        state = self.kinematics(context[:, -1], action)
        flow = self.flow_head(h) * self.dt
        return state, self._warp(fixed, context[:, -1], state, flow)

    def _one(self, context: torch.Tensor, frames: torch.Tensor, action: torch.Tensor,
             z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self._features(context, frames)
        h = feat
        if self.z_dim:
            if z is None:
                z = self.latent.sample_prior(feat if self.learned_prior
                                             else feat.new_zeros(feat.shape[0], 1))
            h = h + self.latent.embed(z)
        state, image = self._next(context, frames, action, h)
        return state, image, feat

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss: pixel MSE of the predicted frames (+ ``beta`` * KL); ``mse``
        reports the kinematic state error (delta-std units), which is not trained."""
        ctx, actions, targets = batch["context"], batch["actions"], batch["targets"]
        frames = to_unit(batch["context_images"])
        tframes = to_unit(batch["target_images"])
        s_err, i_err, kls = [], [], []
        for t in range(actions.shape[1]):
            feat = self._features(ctx, frames)
            h = feat
            if self.z_dim:
                target = torch.cat([self.target_encoder(tframes[:, t]),
                                    self.norm_delta(targets[:, t] - ctx[:, -1])], -1)
                z, kl = self.latent.training_latent(feat, target, self.p_z, self.z_dropout)
                h = h + self.latent.embed(z)
                kls.append(kl)
            s, img = self._next(ctx, frames, actions[:, t], h)
            s_err.append((((s - targets[:, t]) / self.delta_std) ** 2).mean().detach())
            i_err.append(((img - tframes[:, t]) ** 2).mean())
            # the recorded states carry the pose (they equal the kinematics up to the
            # tracker's rounding); the predicted frame is fed back
            ctx = torch.cat([ctx[:, 1:], targets[:, t:t + 1]], 1)
            frames = torch.cat([frames[:, 1:], img.clamp(0.0, 1.0)[:, None]], 1)
        pix = torch.stack(i_err).mean()
        loss = self.image_weight * pix
        out = {"mse": torch.stack(s_err).mean(), "pixel_mse": pix.detach()}
        if kls:
            kl = torch.stack(kls, 1).mean()
            loss = loss + self.beta * kl
            out["kl"] = kl.detach()
        out["loss"] = loss
        return out
