"""Forward model on image + vector contexts (PPUU's setting: a 117x24 RGB occupancy
crop around the ego car plus its 4-D state, ``ncond`` context frames).

An image model is driven only through the model-state contract (worldmodels/contract.py,
documented in docs/worldmodels.md)::

    ms = model.reset(context [B, ncond, S], frames [B, ncond, C, H, W])
    ms = model.advance(ms, action [B, A], z=None)      # ms.state [B, S], ms.image [B, C, H, W]
    traj = model.unroll(ms, actions [B, T, A], z=None)  # traj.states, traj.images, traj.last

``frames`` are the context frames ``[B, ncond, C, H, W]`` (or the last frame
``[B, C, H, W]`` when ncond == 1), uint8 (0..255) or float in [0, 1]; predicted frames are
float in [0, 1]. The vector models' tensor calls ``step`` and ``rollout`` are refused
with one line naming the contract's call. The state head predicts a normalised delta on
the last state, the image head a residual on the last frame. With ``z_dim > 0`` the
model is a conditional VAE with z-dropout like
:class:`~worldmodels.stochastic.StochasticModel`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldplan.worldmodels.base import MCDropout, WorldModel, mlp
from worldplan.worldmodels.contract import ModelState
from worldplan.worldmodels.stochastic import Z_DROPOUT_FORMS, LatentHead


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [0, 1]; float input is returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions (ReLU + channel dropout after each), flattened, then a linear
    layer: ``[B, Cin, H, W] -> [B, hidden]``. ``sizes`` records each stage's (H, W)."""

    def __init__(self, cin: int, hw: tuple[int, int], channels: tuple[int, ...], hidden: int,
                 dropout: float) -> None:
        super().__init__()
        convs, sizes, c = [], [tuple(hw)], cin
        h, w = hw
        for co in channels:
            convs += [nn.Conv2d(c, co, 3, stride=2, padding=1), nn.ReLU(),
                      MCDropout(dropout, channelwise=True)]
            h, w = (h + 1) // 2, (w + 1) // 2
            sizes.append((h, w))
            c = co
        self.convs = nn.Sequential(*convs)
        self.sizes = sizes
        self.flat = c * h * w
        self.out = nn.Linear(self.flat, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: linear to the smallest feature map, then
    (upsample to the next stage's size, 3x3 conv, ReLU, dropout) up to ``[B, C, H, W]``."""

    def __init__(self, cout: int, sizes: list[tuple[int, int]], channels: tuple[int, ...],
                 hidden: int, dropout: float) -> None:
        super().__init__()
        self.sizes = sizes
        self.channels = channels
        h, w = sizes[-1]
        self.inp = nn.Linear(hidden, channels[-1] * h * w)
        rev = list(channels[::-1]) + [cout]
        self.convs = nn.ModuleList(nn.Conv2d(rev[i], rev[i + 1], 3, padding=1)
                                   for i in range(len(channels)))
        self.drop = MCDropout(dropout, channelwise=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hh, ww = self.sizes[-1]
        x = self.inp(h).view(h.shape[0], self.channels[-1], hh, ww)
        targets = self.sizes[-2::-1]
        for i, conv in enumerate(self.convs):
            x = F.interpolate(F.relu(x), size=targets[i], mode="nearest")
            x = conv(self.drop(x) if i > 0 else x)
        return x


class ImageModel(WorldModel):
    """Image + vector forward model (deterministic, or a cVAE when ``z_dim > 0``).

    ``image_shape`` is ``(C, H, W)``; ``channels`` the conv widths; ``image_weight``
    scales the pixel MSE against the state MSE (delta-std units) in the loss.
    """

    kind = "ImageModel"

    def __init__(self, state_dim: int, action_dim: int, image_shape: tuple[int, int, int] | list,
                 ncond: int = 4, hidden: int = 256, layers: int = 2, dropout: float = 0.1,
                 channels: tuple[int, ...] | list = (16, 32, 64), image_weight: float = 1.0,
                 z_dim: int = 0, beta: float = 0.05, p_z: float = 0.5, z_dropout: str = "zero",
                 learned_prior: bool = False) -> None:
        super().__init__(state_dim, action_dim, ncond)
        if len(image_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) positive ints, got {image_shape!r}")
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be positive ints, got {channels!r}")
        if not isinstance(z_dim, int) or z_dim < 0:
            raise ValueError(f"z_dim must be an int >= 0, got {z_dim!r}")
        if z_dropout not in Z_DROPOUT_FORMS:
            raise ValueError(f"z_dropout must be one of {Z_DROPOUT_FORMS}, got {z_dropout!r}")
        if not 0.0 <= p_z <= 1.0:
            raise ValueError(f"p_z must be in [0, 1], got {p_z!r}")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.hidden, self.layers, self.dropout = hidden, layers, float(dropout)
        self.channels = tuple(int(c) for c in channels)
        self.image_weight = float(image_weight)
        self.z_dim, self.beta, self.p_z, self.z_dropout = z_dim, float(beta), float(p_z), z_dropout
        self.learned_prior = bool(learned_prior)
        C, H, W = self.image_shape
        self.image_encoder = ConvEncoder(self.ncond * C, (H, W), self.channels, hidden, dropout)
        self.state_encoder = mlp(self.ncond * self.state_dim, hidden, layers, dropout)
        self.action_embed = nn.Linear(self.action_dim, hidden)
        self.state_head = nn.Sequential(nn.ReLU(), MCDropout(dropout),
                                        mlp(hidden, hidden, layers - 1, dropout,
                                            out=self.state_dim))
        self.image_head = ConvDecoder(C, self.image_encoder.sizes, self.channels, hidden, dropout)
        if z_dim:
            self.target_encoder = ConvEncoder(C, (H, W), self.channels, hidden, 0.0)
            self.latent = LatentHead(hidden, hidden + self.state_dim, hidden, layers, z_dim,
                                     learned_prior)

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim,
                "image_shape": list(self.image_shape), "ncond": self.ncond,
                "hidden": self.hidden, "layers": self.layers, "dropout": self.dropout,
                "channels": list(self.channels), "image_weight": self.image_weight,
                "z_dim": self.z_dim, "beta": self.beta, "p_z": self.p_z,
                "z_dropout": self.z_dropout, "learned_prior": self.learned_prior}

    @classmethod
    def from_deterministic(cls, model: ImageModel, **latent: Any) -> ImageModel:
        """A cVAE image model (``latent``: ``z_dim`` >= 1, ``beta``, ``p_z``, ``z_dropout``,
        ``learned_prior``) warm-started from a trained ``z_dim=0`` one: shared weights and
        normaliser copied, so it predicts exactly what ``model`` did until trained."""
        if not isinstance(model, ImageModel) or model.z_dim:
            raise TypeError("model must be an ImageModel with z_dim=0")
        allowed = {"z_dim", "beta", "p_z", "z_dropout", "learned_prior"}
        unknown = sorted(set(latent) - allowed)
        if unknown:
            raise ValueError(f"{unknown} cannot change at warm start; only {sorted(allowed)}")
        config = {**model.config(), "z_dim": 4, **latent}
        if config["z_dim"] < 1:
            raise ValueError(f"z_dim must be >= 1 for a stochastic model, got {config['z_dim']}")
        new = cls(**config)
        missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
        assert not unexpected and all(k.startswith(("latent.", "target_encoder."))
                                      for k in missing)
        return new.to(next(model.parameters()).device)

    # -- inputs ----------------------------------------------------------------------
    def _as_frames(self, image: Any, batch: int, name: str = "image") -> torch.Tensor:
        """``[B, C, H, W]`` (ncond == 1) or ``[B, ncond, C, H, W]`` -> float
        ``[B, ncond, C, H, W]`` in [0, 1]."""
        if image is None:
            raise ValueError(f"{self.kind} needs {name} (the context frames)")
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
        shape = tuple(image.shape)
        if self.ncond == 1 and shape == (batch, *self.image_shape):
            image = image[:, None]
        elif shape != (batch, self.ncond, *self.image_shape):
            raise ValueError(
                f"{name} must have shape [{batch}, {self.ncond}, "
                f"{', '.join(map(str, self.image_shape))}]"
                + (f" or [{batch}, {', '.join(map(str, self.image_shape))}]"
                   if self.ncond == 1 else "") + f", got {list(shape)}"
            )
        return to_unit(image)

    def _features(self, context: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Context encoding ``[B, H]`` (before the action)."""
        return (self.image_encoder(frames.flatten(1, 2))
                + self.state_encoder(self.norm_state(context).flatten(1)))

    def _decode(self, context: torch.Tensor, frames: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        state = context[:, -1] + self.denorm_delta(self.state_head(h))
        image = frames[:, -1] + self.image_head(h)
        return state, image

    def sample_prior(self, batch: int, steps: int | None = None,
                     context: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor | None:
        if not self.z_dim:
            return None
        if self.learned_prior:
            raise ValueError("a learned prior of an ImageModel is sampled inside rollout "
                             "(pass z=None)")
        cond = self.state_mean.new_zeros(batch, 1)
        draws = [self.latent.sample_prior(cond, generator) for _ in range(steps or 1)]
        return torch.stack(draws, 1) if steps is not None else draws[0]

    def _one(self, context: torch.Tensor, frames: torch.Tensor, action: torch.Tensor,
             z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self._features(context, frames)
        h = feat + self.action_embed(self.norm_action(action))
        if self.z_dim:
            if z is None:
                z = self.latent.sample_prior(feat if self.learned_prior
                                             else feat.new_zeros(feat.shape[0], 1))
            h = h + self.latent.embed(z)
        state, image = self._decode(context, frames, h)
        return state, image, feat

    # -- the tensor calls of the vector models: one way to step an image model ------------
    def step(self, state: torch.Tensor, action: torch.Tensor,
             z: torch.Tensor | None = None) -> torch.Tensor:
        """Refused: an image model steps through the contract (see the module doc)."""
        raise TypeError(f"{self.kind} steps through the model-state contract: "
                        "model.advance(model.reset(context, frames), action, z)")

    def rollout(self, context: torch.Tensor, actions: torch.Tensor,
                z: torch.Tensor | None = None) -> torch.Tensor:
        """Refused: an image model rolls out through the contract (see the module doc)."""
        raise TypeError(f"{self.kind} rolls out through the model-state contract: "
                        "model.unroll(model.reset(context, frames), actions, z)")

    # -- the model-state contract ----------------------------------------------------------
    def _context_frames(self, frames: torch.Tensor | None, batch: int) -> torch.Tensor:
        return self._as_frames(frames, batch, "frames")

    def _advance(self, ms: ModelState, action: torch.Tensor, z: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        s, img, _ = self._one(ms.context, ms.frames, action, z)
        return s, img.clamp(0.0, 1.0)

    def features(self, ms: ModelState) -> torch.Tensor:
        """The encoding ``[B, hidden]`` of the model state ``ms`` (its context states and
        frames, before the action): what the heads and the posterior read."""
        if not isinstance(ms, ModelState) or ms.frames is None:
            raise TypeError(f"features takes a ModelState with frames (from model.reset), "
                            f"got {type(ms).__name__}")
        return self._features(ms.context, ms.frames)

    def posterior(self, ms: ModelState, next_state: torch.Tensor,
                  next_image: torch.Tensor | None = None) -> torch.Tensor:
        if not self.z_dim:
            raise TypeError(f"{self.kind} has no latent (z_dim = 0): no posterior")
        if next_image is None:
            raise ValueError("an image model's posterior needs next_image [B, C, H, W]")
        feat = self.features(ms)
        target = torch.cat([self.target_encoder(to_unit(next_image)),
                            self.norm_delta(next_state - ms.state)], -1)
        mu, _ = self.latent.posterior(torch.cat([feat, target], -1)).chunk(2, -1)
        return mu

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss on a window batch with ``context_images``/``target_images``:
        state MSE (delta-std units) + ``image_weight`` * pixel MSE (+ ``beta`` * KL)."""
        ctx, actions, targets = batch["context"], batch["actions"], batch["targets"]
        frames = to_unit(batch["context_images"])
        tframes = to_unit(batch["target_images"])
        T = actions.shape[1]
        s_err, i_err, kls = [], [], []
        for t in range(T):
            feat = self._features(ctx, frames)
            h = feat + self.action_embed(self.norm_action(actions[:, t]))
            if self.z_dim:
                target = torch.cat([self.target_encoder(tframes[:, t]),
                                    self.norm_delta(targets[:, t] - ctx[:, -1])], -1)
                z, kl = self.latent.training_latent(feat, target, self.p_z, self.z_dropout)
                h = h + self.latent.embed(z)
                kls.append(kl)
            s, img = self._decode(ctx, frames, h)
            s_err.append((((s - targets[:, t]) / self.delta_std) ** 2).mean())
            i_err.append(((img - tframes[:, t]) ** 2).mean())
            ctx = torch.cat([ctx[:, 1:], s[:, None]], 1)
            frames = torch.cat([frames[:, 1:], img.clamp(0.0, 1.0)[:, None]], 1)
        mse = torch.stack(s_err).mean()
        pix = torch.stack(i_err).mean()
        loss = mse + self.image_weight * pix
        out = {"mse": mse.detach(), "pixel_mse": pix.detach()}
        if kls:
            kl = torch.stack(kls, 1).mean()
            loss = loss + self.beta * kl
            out["kl"] = kl.detach()
        out["loss"] = loss
        return out

    @torch.no_grad()
    def preview(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """An image grid ``[3, n*H, 2*W]``: one-step predictions (left) next to targets."""
        was = self.training
        self.eval()
        n = batch["context"].shape[0]
        z = torch.zeros(n, self.z_dim) if self.z_dim else None
        img = self.advance(self.reset(batch["context"], batch["context_images"]),
                           batch["actions"][:, 0], z).image
        self.train(was)
        target = to_unit(batch["target_images"][:, 0])
        pair = torch.cat([img, target], dim=-1)  # [n, C, H, 2W]
        if pair.shape[1] != 3:
            pair = pair[:, :1].repeat(1, 3, 1, 1)
        return torch.cat(list(pair), dim=1)
