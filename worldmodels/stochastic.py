"""Stochastic forward model: a conditional VAE with z-dropout (PPUU's forward model).

Training: the posterior ``q(z | context, target)`` encodes what the context and action
cannot explain; its sample is embedded and added to the deterministic model's hidden
vector. With probability ``p_z`` per sample and step the posterior is bypassed
(**z-dropout**), in one of two named forms:

- ``zero``: z = 0 (as the NYU deep-learning lecture describes);
- ``prior``: z is drawn from the prior (as the original PPUU code does).

Bypassed steps must be predicted from the context and the action alone, so the model
cannot route the action's effect through z (PPUU's "action insensitivity"). The loss is
the open-loop MSE (delta-std units) plus ``beta`` times the KL to the prior, a fixed
N(0, I) or, with ``learned_prior=True``, a Gaussian conditioned on the context.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from worldplan.worldmodels.base import mlp
from worldplan.worldmodels.contract import ModelState
from worldplan.worldmodels.deterministic import DeterministicModel

Z_DROPOUT_FORMS = ("zero", "prior")
RECON_LOSSES = ("mse", "l1")


class LatentHead(nn.Module):
    """Posterior, prior and latent embedding of a conditional VAE.

    ``cond`` ``[B, Dc]`` describes the context, ``target`` ``[B, Dt]`` the step to explain;
    the embedding ``[B, H]`` of a latent ``[B, Z]`` is zero at initialisation, so a model
    warm-started from a deterministic one predicts exactly what it did.
    """

    def __init__(self, cond_dim: int, target_dim: int, hidden: int, layers: int, z_dim: int,
                 learned_prior: bool = False) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.posterior = mlp(cond_dim + target_dim, hidden, layers, 0.0, out=2 * z_dim)
        self.prior_net = (mlp(cond_dim, hidden, layers, 0.0, out=2 * z_dim)
                          if learned_prior else None)
        self.embed = nn.Linear(z_dim, hidden)
        nn.init.zeros_(self.embed.weight)
        nn.init.zeros_(self.embed.bias)

    def prior(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean and log-variance ``[B, Z]`` each."""
        if self.prior_net is None:
            zeros = cond.new_zeros(cond.shape[0], self.z_dim)
            return zeros, zeros
        mu, logvar = self.prior_net(cond).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 4.0)

    def sample_prior(self, cond: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self.prior(cond)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * (0.5 * logvar).exp()

    def posterior_sample(self, cond: torch.Tensor, target: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised posterior sample ``[B, Z]`` and KL to the prior ``[B]`` (nats)."""
        mu, logvar = self.posterior(torch.cat([cond, target], dim=-1)).chunk(2, dim=-1)
        logvar = logvar.clamp(-8.0, 4.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        pmu, plogvar = self.prior(cond)
        kl = 0.5 * (plogvar - logvar + (logvar.exp() + (mu - pmu) ** 2) / plogvar.exp() - 1.0)
        return z, kl.sum(-1)

    def training_latent(self, cond: torch.Tensor, target: torch.Tensor, p_z: float,
                        form: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior sample with z-dropout applied per sample; returns ``(z, kl)``."""
        z, kl = self.posterior_sample(cond, target)
        if p_z > 0.0:
            bypass = (torch.rand(z.shape[0], 1, device=z.device) < p_z).to(z.dtype)
            other = torch.zeros_like(z) if form == "zero" else self.sample_prior(cond)
            z = bypass * other + (1.0 - bypass) * z
        return z, kl


class StochasticModel(DeterministicModel):
    """Conditional-VAE forward model on vector states.

    ``step(state, action, z=None)``: ``z`` ``[B, Z]`` is the latent; when None it is drawn
    from the prior (so repeated calls differ). ``rollout(context, actions, z=None)`` takes
    ``z`` ``[B, T, Z]`` (or ``[B, Z]``, reused), drawing each step from the prior when
    None. Build one from a trained deterministic model with :meth:`from_deterministic`.
    """

    kind = "StochasticModel"

    def __init__(self, state_dim: int, action_dim: int, ncond: int = 1, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.1, z_dim: int = 4, beta: float = 0.05,
                 p_z: float = 0.5, z_dropout: str = "zero", learned_prior: bool = False,
                 recon: str = "mse") -> None:
        super().__init__(state_dim, action_dim, ncond, hidden, layers, dropout)
        if recon not in RECON_LOSSES:
            raise ValueError(f"recon must be one of {RECON_LOSSES}, got {recon!r}")
        self.recon = recon
        if not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"z_dim must be an int >= 1, got {z_dim!r}")
        if not (isinstance(beta, (int, float)) and beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        if not (isinstance(p_z, (int, float)) and 0.0 <= p_z <= 1.0):
            raise ValueError(f"p_z must be in [0, 1], got {p_z!r}")
        if z_dropout not in Z_DROPOUT_FORMS:
            raise ValueError(f"z_dropout must be one of {Z_DROPOUT_FORMS}, got {z_dropout!r}")
        self.z_dim = z_dim
        self.beta, self.p_z, self.z_dropout = float(beta), float(p_z), z_dropout
        self.learned_prior = bool(learned_prior)
        self.latent = LatentHead(self.ncond * self.state_dim, self.state_dim, hidden, layers,
                                 z_dim, learned_prior)
        self.use_fast_masks()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "z_dim": self.z_dim, "beta": self.beta, "p_z": self.p_z,
                "z_dropout": self.z_dropout, "learned_prior": self.learned_prior,
                "recon": self.recon}

    @classmethod
    def from_deterministic(cls, model: DeterministicModel, **kwargs: Any) -> StochasticModel:
        """A stochastic model whose shared weights and normaliser are copied from ``model``
        (it predicts exactly what ``model`` did until trained). ``kwargs``: the latent
        options (``z_dim``, ``beta``, ``p_z``, ``z_dropout``, ``learned_prior``)."""
        if type(model) is not DeterministicModel:
            raise TypeError(f"model must be a DeterministicModel, got {type(model).__name__}")
        config = model.config()
        clash = sorted(set(kwargs) & set(config))
        if clash:
            raise ValueError(f"{clash} come from the deterministic model and cannot be changed")
        new = cls(**config, **kwargs)
        missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("latent.") for k in missing)
        return new.to(next(model.parameters()).device)

    def _cond(self, context: torch.Tensor) -> torch.Tensor:
        return self.norm_state(context).flatten(1)

    def sample_prior(self, batch: int, steps: int | None = None,
                     context: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents from the prior: ``[B, Z]`` or ``[B, T, Z]`` (a learned prior is
        evaluated at ``context`` ``[B, ncond, S]`` for every step)."""
        if self.learned_prior:
            if context is None:
                raise ValueError("a learned prior needs the context to sample from")
            cond = self._cond(self._as_context(context, "context"))
        else:
            cond = self.state_mean.new_zeros(batch, 1)
        draws = [self.latent.sample_prior(cond, generator) for _ in range(steps or 1)]
        return torch.stack(draws, 1) if steps is not None else draws[0]

    def _predict(self, context: torch.Tensor, action: torch.Tensor,
                 z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            z = self.latent.sample_prior(self._cond(context) if self.learned_prior
                                         else context.new_zeros(context.shape[0], 1))
        h = self._hidden(context, action) + self.latent.embed(z)
        return self._decode(context, h)

    def posterior(self, ms: ModelState, next_state: torch.Tensor,
                  next_image: torch.Tensor | None = None) -> torch.Tensor:
        target = self.norm_delta(next_state - ms.state)
        mu, _ = self.latent.posterior(torch.cat([self._cond(ms.context), target], -1)
                                      ).chunk(2, -1)
        return mu

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss: open-loop MSE with posterior latents (z-dropout applied) plus
        ``beta`` * KL (nats per step). Returns ``loss``, ``mse``, ``kl``."""
        ctx, actions, targets = batch["context"], batch["actions"], batch["targets"]
        T = actions.shape[1]
        true_seq = torch.cat([ctx, targets], dim=1)  # [B, ncond + T, S]
        preds, kls = [], []
        for t in range(T):
            true_ctx = true_seq[:, t : t + self.ncond]
            target = self.norm_delta(targets[:, t] - true_ctx[:, -1])
            z, kl = self.latent.training_latent(self._cond(true_ctx), target, self.p_z,
                                                self.z_dropout)
            nxt = self._predict(ctx, actions[:, t], z)
            preds.append(nxt)
            kls.append(kl)
            ctx = torch.cat([ctx[:, 1:], nxt[:, None]], dim=1)
        pred = torch.stack(preds, 1)
        err = (pred - targets) / self.delta_std
        mse = (err**2).mean()
        recon = mse if self.recon == "mse" else err.abs().mean()
        kl = torch.stack(kls, 1).mean()
        return {"loss": recon + self.beta * kl, "mse": mse.detach(), "kl": kl.detach()}
