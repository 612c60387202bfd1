"""Training any world model on a data set's windows: Adam, gradient clipping, a guard
against non-finite batches, held-out loss per epoch, ``last.pt``/``best.pt`` checkpoints,
bit-for-bit resume, TensorBoard scalars, and DDP under ``torchrun`` (gloo on CPU).

The loss is the model's own: ``model(batch)["loss"]`` on a window batch dict (see
:meth:`worldplan.worldmodels.dataset.WindowDataset.get_batch`).

Length: one training loop (resumable, distributed, checkpointed) with its evaluation
helpers and PPUU's two-phase schedule, which calls the loop twice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from worldplan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    save_checkpoint,
)
from worldplan.worldmodels.base import WorldModel
from worldplan.worldmodels.dataset import Dataset
from worldplan.worldmodels.images import ImageModel
from worldplan.worldmodels.stochastic import StochasticModel

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training stopped after a run of batches with a NaN/inf loss or gradient."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training phase.

    ``epochs`` passes over the train windows, or stop after ``steps`` optimiser steps
    when set. ``batch_size`` is the global batch (split across DDP ranks). ``npred`` is
    the number of open-loop steps in the loss. ``max_nonfinite`` consecutive skipped
    batches stop training with :class:`NonFiniteLossError`. ``checkpoint_every`` (steps,
    0 = only at epoch ends). ``val_windows`` caps the held-out windows evaluated per
    epoch (0 = all). ``fused_adam``: see :func:`make_optimizer`.
    """

    epochs: int = 10
    steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    npred: int = 1
    seed: int = 0
    max_nonfinite: int = 10
    checkpoint_every: int = 0
    val_windows: int = 0
    log_every: int = 25
    lr_schedule: str = "constant"
    device: str = "cpu"
    fused_adam: bool = False  # Adam's fused kernel: faster, rounds differently (make_optimizer)

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig: {msg}")

        need(isinstance(self.epochs, int) and self.epochs >= 0, f"epochs must be >= 0, got "
             f"{self.epochs!r}")
        need(self.steps is None or (isinstance(self.steps, int) and self.steps >= 0),
             f"steps must be None or >= 0, got {self.steps!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be >= 1, got {self.batch_size!r}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr!r}")
        need(self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip!r}")
        need(isinstance(self.npred, int) and self.npred >= 1, f"npred must be >= 1, got "
             f"{self.npred!r}")
        need(self.max_nonfinite >= 1, f"max_nonfinite must be >= 1, got {self.max_nonfinite}")
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")
        need(self.val_windows >= 0, "val_windows must be >= 0")
        need(self.lr_schedule in ("constant", "cosine"),
             f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")


def check_compatible(model: WorldModel, dataset: Dataset) -> None:
    """Raise a ``ValueError`` naming both shapes when ``model`` cannot train on ``dataset``."""
    if not isinstance(model, WorldModel):
        raise TypeError(f"model must be a worldmodels WorldModel, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a worldmodels Dataset, got {type(dataset).__name__}")
    if (model.state_dim, model.action_dim) != (dataset.state_dim, dataset.action_dim):
        raise ValueError(
            f"{model.kind} expects states [B, {model.state_dim}] and actions "
            f"[B, {model.action_dim}], but data set {dataset.path} holds states "
            f"[T+1, {dataset.state_dim}] and actions [T, {dataset.action_dim}]"
        )
    m_img = model.image_shape
    d_img = dataset.image_shape
    if m_img is not None and (d_img is None or tuple(m_img) != tuple(d_img)):
        raise ValueError(
            f"{model.kind} expects images {list(m_img)} (C, H, W), but data set "
            f"{dataset.path} holds {list(d_img) if d_img else 'no images'}"
        )


# ------------------------------------------------------------------------ optimiser
class FlatAdam:
    """Adam over one flat buffer: the foreach Adam of :func:`make_optimizer`, to the bit,
    with one call per operation instead of one per parameter.

    Every parameter (``[*shape]`` each, all of one dtype and device) becomes a view into
    one contiguous buffer ``[N]``; after the backward pass the gradients are gathered
    into one buffer ``[N]`` (one ``cat``), clipped there (:meth:`clip_grad_norm`, the
    norms computed per parameter as ``clip_grad_norm_`` does) and Adam's moments live in
    two more ``[N]`` buffers. Each element gets the same operations with the same scalars
    as under ``torch.optim.Adam(foreach=True)``, which is why the results are identical
    (tests/test_worldmodels.py checks it). On a small model the per-parameter calls, not
    the arithmetic, are what an Adam step costs on CPU.

    ``fused``: the fused Adam kernel in one call over the flat buffers (one pass instead
    of the foreach Adam's seven); :func:`make_optimizer` uses it where its values are
    those of ``torch.optim.Adam(fused=True)``, to the bit.

    A step where some parameter has no gradient falls back to the per-parameter Adam
    (which skips it and keeps its own step count), on the same state. ``param_groups``,
    ``zero_grad``, ``state_dict`` and ``load_state_dict`` are those of that Adam, so a
    checkpoint has the layout of ``torch.optim.Adam`` and loads into either.
    """

    def __init__(self, params: list[torch.Tensor], lr: float,
                 weight_decay: float = 0.0, fused: bool = False) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("params must hold at least one parameter")
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device or p.is_sparse
               or not p.is_floating_point() for p in self.params):
            raise ValueError("params must be dense floating-point tensors of one dtype and "
                             "device")
        if fused:  # raises where this torch build has no fused kernel for these
            self.adam = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay,
                                         fused=True)
        else:
            self.adam = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay,
                                         foreach=True)
        self.fused = bool(fused)
        self._sizes = [p.numel() for p in self.params]
        n = sum(self._sizes)
        kw = {"dtype": first.dtype, "device": first.device}
        self.flat = torch.empty(n, **kw)
        self.grad = torch.empty(n, **kw)
        self.exp_avg = torch.zeros(n, **kw)
        self.exp_avg_sq = torch.zeros(n, **kw)
        self._denom = torch.empty(n, **kw)
        # one step count per parameter (what the per-parameter Adam keeps), as 0-dim
        # views of one tensor so that the flat step advances them all with one call
        self.steps = torch.zeros(len(self.params), dtype=torch.float32)
        self._grad_views = list(self.grad.split(self._sizes))
        self._offsets = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        # this step's flat gradient and its per-parameter views: self.grad, or the buffer
        # the backward pass wrote the gradients into when they lie in this layout already
        self._g, self._gviews = self.grad, self._grad_views
        self._link()
        for i, p in enumerate(self.params):
            self.adam.state[p] = {"step": self.steps[i],
                                  "exp_avg": self._view(self.exp_avg, i),
                                  "exp_avg_sq": self._view(self.exp_avg_sq, i)}
        self._uniform = True  # every parameter has taken every step (flat steps allowed)
        self._gathered = False  # self.grad holds this step's (clipped) gradients

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The Adam's groups (one): set ``lr`` here (a loaded state replaces the list)."""
        return self.adam.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.adam.defaults

    def _view(self, buf: torch.Tensor, i: int) -> torch.Tensor:
        o = sum(self._sizes[:i])
        return buf[o:o + self._sizes[i]].view_as(self.params[i])

    def _link(self) -> None:
        """Copy the parameters' values into the flat buffer and make each a view of it."""
        with torch.no_grad():
            torch.cat([p.detach().reshape(-1) for p in self.params], out=self.flat)
        for i, p in enumerate(self.params):
            p.data = self._view(self.flat, i)
        self._ptrs = [p.data_ptr() for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``Adam.zero_grad`` (a plain loop: its bookkeeping costs more than the work)."""
        self._gathered = False
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def _gather(self) -> bool:
        """The gradients into the flat buffer; False when a parameter has none."""
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            return False
        flat = self._flat_of(grads)
        if flat is None:
            torch.cat([g.reshape(-1) for g in grads], out=self.grad)
            self._g, self._gviews = self.grad, self._grad_views
        else:  # already one buffer in this layout (a fused backward wrote them so)
            self._g, self._gviews = flat, flat.split(self._sizes)
        self._gathered = True
        return True

    def _flat_of(self, grads: list[torch.Tensor]) -> torch.Tensor | None:
        """The flat ``[N]`` tensor the gradients are views of, parameter after parameter
        in one storage; None when they are not (then they are gathered by a copy)."""
        g0 = grads[0]
        if g0.dtype != self.flat.dtype or g0.device != self.flat.device:
            return None
        storage = g0.untyped_storage()
        base, size = g0.data_ptr(), g0.element_size()
        # consecutive contiguous views inside one allocation that holds all N values
        if base - storage.data_ptr() + self.flat.numel() * size > storage.nbytes():
            return None
        for g, o in zip(grads, self._offsets, strict=True):
            if g.data_ptr() != base + o * size or not g.is_contiguous() or \
                    g.dtype != g0.dtype:
                return None
        return g0.new_empty(0).set_(storage, g0.storage_offset(), (self.flat.numel(),))

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_(params, max_norm, foreach=True)`` (the same norm and factor,
        to the bit) on the flat gradient; returns the norm before clipping."""
        if not self._uniform or not self._gather():
            return torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        norms = torch._foreach_norm(self._gviews, 2.0)
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if factor.item() != 1.0:  # a product with 1.0 changes nothing: skip the pass
            self._g.mul_(factor)
        return total

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step (the flat one when every parameter has a gradient)."""
        if self._ptrs != [p.data_ptr() for p in self.params]:
            self._link()  # a parameter was given new storage (``.to``, ``.data = ``)
        if not self._uniform or not (self._gathered or self._gather()):
            self._uniform = False
            self.adam.step()
            return
        group = self.param_groups[0]
        lr, (beta1, beta2) = group["lr"], group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        if self.fused:  # as torch.optim.adam._fused_adam, on the flat buffers
            self.steps.add_(1.0)
            torch._fused_adam_([self.flat], [self._g], [self.exp_avg], [self.exp_avg_sq], [],
                               [self.steps[:1]], amsgrad=False, lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=wd, eps=eps, maximize=False,
                               grad_scale=None, found_inf=None)
            self._gathered = False
            return
        # as torch.optim.adam._multi_tensor_adam (capturable=False, no amsgrad)
        self.steps.add_(torch.tensor(1.0), alpha=1.0)
        step = self.steps[0].item()
        grad = self._g if wd == 0 else torch.add(self._g, self.flat, alpha=wd)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2)
        self.exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        step_size = (lr / (1 - beta1 ** step)) * -1
        bc2 = (1 - beta2 ** step) ** 0.5
        denom = self._denom
        info = torch.finfo(denom.dtype)
        if 2 * math.sqrt(info.tiny) / bc2 < eps * info.eps / 4:
            # torch's sqrt takes several times longer on zeros (parameters that never had a
            # gradient) than on normal numbers: raise the second moments to the smallest
            # normal number first. The same bits: any v <= tiny gives sqrt(v) / bc2 below
            # half a unit in the last place of eps, so denom = eps either way
            torch.clamp(self.exp_avg_sq, min=info.tiny, out=denom).sqrt_()
        else:
            torch.sqrt(self.exp_avg_sq, out=denom)
        # the foreach Adam's div_ then add_ with its Python scalars, in place: two vectorised
        # passes (one addcdiv with two broadcast 0-dim operands takes the scalar loop, 3x
        # their time, for the same two roundings)
        denom.div_(bc2).add_(eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=step_size)
        self._gathered = False

    def state_dict(self) -> dict[str, Any]:
        return self.adam.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A ``torch.optim.Adam`` state (of these parameters, in order) into the buffers."""
        self.adam.load_state_dict(state)
        with torch.no_grad():
            for i, p in enumerate(self.params):
                st = self.adam.state.get(p, {})
                m, v = self._view(self.exp_avg, i), self._view(self.exp_avg_sq, i)
                if "exp_avg" in st:
                    m.copy_(st["exp_avg"])
                    v.copy_(st["exp_avg_sq"])
                    self.steps[i] = float(st["step"])
                else:  # never stepped: Adam's initial state
                    m.zero_()
                    v.zero_()
                    self.steps[i] = 0.0
                self.adam.state[p] = {"step": self.steps[i], "exp_avg": m, "exp_avg_sq": v}
        self._uniform = bool((self.steps == self.steps[0]).all())
        self._gathered = False


def make_optimizer(params: Any, lr: float, weight_decay: float = 0.0,
                   fused: bool = False, flat: bool = False) -> torch.optim.Adam | FlatAdam:
    """Adam as the world models train with it: the multi-tensor ("foreach")
    implementation, or with ``fused`` the fused kernel (one pass over all parameters per
    step, on CPU too; falls back to foreach where this torch build has none). The two
    round differently, so a training run is reproduced bit for bit only with the same
    choice; foreach is the default every stored result was trained with. ``flat``: the
    same Adam on one flat buffer (:class:`FlatAdam`, equal to the bit, faster on small
    models; the parameters become views of its buffer)."""
    params = list(params)
    # the fused kernel treats a tensor's last (size mod vector width) values apart: on
    # one flat buffer every parameter but the last must end on a multiple of it for the
    # values of the per-parameter kernel (64: a multiple of every CPU vector width)
    if fused and flat and all(p.numel() % 64 == 0 for p in params[:-1]):
        try:
            return FlatAdam(params, lr, weight_decay, fused=True)
        except (RuntimeError, ValueError) as exc:  # mixed dtypes, or no fused kernel
            log.info("no flat fused Adam (%s); using the per-parameter one", exc)
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            log.info("no fused Adam for these parameters; using the foreach implementation")
    if flat:
        try:
            return FlatAdam(params, lr, weight_decay)
        except ValueError as exc:  # mixed dtypes or devices: the per-parameter Adam
            log.info("no flat Adam (%s); using the foreach implementation", exc)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def clip_gradients(params: list[torch.Tensor], max_norm: float,
                   optimizer: Any = None) -> torch.Tensor:
    """``clip_grad_norm_`` over ``params`` (a list, gathered once rather than walking the
    module tree every step) with the multi-tensor norm; returns the norm before clipping.
    With a :class:`FlatAdam` ``optimizer`` over those parameters, clipped in its flat
    buffer (the same norm and result)."""
    if isinstance(optimizer, FlatAdam):
        return optimizer.clip_grad_norm(max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


# ------------------------------------------------------------------------ distributed
def _dist_setup() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun (gloo on CPU)."""
    if dist.is_available() and not dist.is_initialized() and int(
        os.environ.get("WORLD_SIZE", "1")
    ) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True unless this is a DDP rank other than 0 (gate run-folder side effects on it:
    figures, metrics, videos, under ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _all_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value


# ------------------------------------------------------------------------ training
def train_model(
    model: WorldModel,
    dataset: Dataset,
    config: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    writer: Any = None,
    resume: bool = False,
    progress: bool = True,
    tag: str = "model",
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` (train split; val split for the held-out loss).

    A fresh model gets its normaliser from ``dataset.stats``; a model that already has
    statistics (trained or warm-started) keeps them. With
    ``checkpoint_dir``, writes ``last.pt`` every epoch (and every ``checkpoint_every``
    steps) and ``best.pt`` when the val loss improves; both load with
    :func:`worldplan.worldmodels.base.load_model`. ``resume=True`` continues from ``last.pt``
    bit-for-bit (optimizer, RNG, data order). ``writer`` is a TensorBoard
    ``SummaryWriter``; scalars go under ``tag/``. Under ``torchrun`` the model is wrapped in
    DDP and each rank sees its share of every batch.

    Returns the history: ``train_loss``/``val_loss`` per epoch, ``step_loss`` per step,
    ``skipped`` (non-finite batches), ``steps``, ``epochs``, ``best_val``, ``seconds``,
    ``samples_per_s``.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    check_compatible(model, dataset)
    rank, world = _dist_setup()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{world} DDP processes")
    device = torch.device(config.device)
    train_w = dataset.windows("train", model.ncond, config.npred)
    try:
        val_w = dataset.windows("val", model.ncond, config.npred)
    except ValueError:
        val_w = None
        log.warning("data set %s has no val windows; best.pt follows the train loss",
                    dataset.path)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    model.to(device)

    state = {"epoch": 0, "batch": 0, "step": 0, "skipped": 0, "consecutive": 0,
             "best_val": math.inf, "seconds": 0.0}
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "step_loss": []}
    params = list(model.parameters())
    # the flat Adam (equal to the bit) on one process; DDP manages the gradients itself
    optimizer = make_optimizer(params, config.lr, config.weight_decay, config.fused_adam,
                               flat=world == 1)
    rng_state: torch.Tensor | None = None
    partial: list[float] = []  # losses of the current epoch before a mid-epoch checkpoint
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    if resume and last_path is not None and last_path.is_file():
        payload = load_checkpoint(last_path, required=("state_dict", "training"))
        if payload.get("kind") != model.kind:
            raise CheckpointError(f"checkpoint {last_path} holds a {payload.get('kind')!r}, "
                                  f"the model is a {model.kind!r}")
        load_state_dict_checked(model, payload["state_dict"], str(last_path))
        tr = payload["training"]
        optimizer.load_state_dict(tr["optimizer"])
        state.update(tr["state"])
        history = tr["history"]
        partial = list(tr.get("partial", []))
        rngs = tr["rng"]
        rng_state = rngs[rank] if rank < len(rngs) else rngs[0]
        log.info("resumed %s from %s at epoch %d step %d", model.kind, last_path,
                 state["epoch"], state["step"])
    else:
        if resume:
            log.warning("resume asked but %s does not exist; starting fresh", last_path)
        _adopt_normalizer(model, dataset)

    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    sampler = DistributedSampler(train_w, num_replicas=world, rank=rank, shuffle=True,
                                 seed=config.seed, drop_last=False)
    per_rank = config.batch_size // world
    batches_per_epoch = math.ceil(math.ceil(len(train_w) / world) / per_rank)
    total_steps = config.steps if config.steps is not None else config.epochs * batches_per_epoch
    bar = tqdm(total=total_steps, initial=min(state["step"], total_steps), disable=not progress
               or rank != 0, desc=f"train {model.kind}", unit="step", leave=False)

    def save(name: str, extra: dict[str, Any] | None = None) -> None:
        if ckpt_dir is None:
            return
        rngs = [torch.get_rng_state()]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rank != 0:
            return
        payload = model.to_checkpoint()
        payload["training"] = {
            "optimizer": optimizer.state_dict(),
            "rng": rngs,
            "state": dict(state),
            "history": history,
            "partial": list(partial),
            "config": dataclasses.asdict(config),
            **(extra or {}),
        }
        save_checkpoint(ckpt_dir / name, payload)

    with torch.random.fork_rng(devices=[]):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        else:
            torch.manual_seed(config.seed * 1000 + rank)
        t0 = time.perf_counter() - state["seconds"]
        session_start = time.perf_counter()
        samples = 0
        done = state["step"] >= total_steps
        while not done and (config.steps is not None or state["epoch"] < config.epochs):
            epoch = state["epoch"]
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            model.train()
            b = state["batch"]
            while b * per_rank < len(order):
                batch = train_w.get_batch(order[b * per_rank : (b + 1) * per_rank])
                batch = {k: v.to(device) for k, v in batch.items()}
                out = net(batch)
                loss = out["loss"]
                if config.lr_schedule == "cosine":
                    frac = min(state["step"] / max(total_steps, 1), 1.0)
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = clip_gradients(params, config.grad_clip, optimizer)
                bad = torch.tensor(float(not (torch.isfinite(loss) and torch.isfinite(gnorm))))
                bad = _all_mean(bad, world)
                mean_loss = float(_all_mean(loss.detach().cpu(), world))
                b += 1
                state["batch"] = b
                state["step"] += 1
                samples += config.batch_size
                if bad > 0:
                    optimizer.zero_grad(set_to_none=True)
                    state["skipped"] += 1
                    state["consecutive"] += 1
                    log.warning("skipped a non-finite batch (epoch %d, step %d, loss %s)",
                                epoch, state["step"], mean_loss)
                    if state["consecutive"] >= config.max_nonfinite:
                        bar.close()
                        raise NonFiniteLossError(
                            f"{state['consecutive']} consecutive batches had a non-finite loss "
                            f"or gradient (epoch {epoch}, step {state['step']}, last loss "
                            f"{mean_loss}); check the data set {dataset.path} and lower lr "
                            f"({config.lr})"
                        )
                else:
                    state["consecutive"] = 0
                    optimizer.step()
                    partial.append(mean_loss)
                history["step_loss"].append(mean_loss)
                bar.update(1)
                if state["step"] % max(config.log_every, 1) == 0:
                    bar.set_postfix(loss=f"{mean_loss:.4g}", epoch=epoch)
                    if writer is not None and rank == 0:
                        writer.add_scalar(f"{tag}/train_step_loss", mean_loss, state["step"])
                        for key, val in out.items():
                            if key != "loss" and val.numel() == 1:
                                writer.add_scalar(f"{tag}/{key}", float(val), state["step"])
                if state["step"] >= total_steps:
                    done = True
                    break
                if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                    state["seconds"] = time.perf_counter() - t0
                    save("last.pt")
            epoch_end = b * per_rank >= len(order)
            if epoch_end or done:
                train_loss = float(np.mean(partial)) if partial else math.nan
                val_loss = _validation_loss(model, val_w, config, device, epoch)
                history["train_loss"].append(train_loss)
                history["val_loss"].append(val_loss)
                monitor = val_loss if val_w is not None else train_loss
                improved = math.isfinite(monitor) and monitor < state["best_val"]
                if improved:
                    state["best_val"] = monitor
                if epoch_end:
                    state["epoch"] += 1
                    state["batch"] = 0
                    partial = []
                state["seconds"] = time.perf_counter() - t0
                if writer is not None and rank == 0:
                    writer.add_scalar(f"{tag}/train_loss", train_loss, epoch)
                    writer.add_scalar(f"{tag}/val_loss", val_loss, epoch)
                    _log_images(writer, model, val_w or train_w, tag, epoch, device)
                # no validation split (e.g. a model-based RL loop that trains on all data)
                val_text = f"{val_loss:.5g}" if val_w is not None else "- (no validation split)"
                log.info("%s epoch %d: train %.5g val %s", model.kind, epoch, train_loss,
                         val_text)
                save("last.pt")
                if improved:
                    save("best.pt", {"val_loss": monitor, "epoch": epoch})
    bar.close()
    elapsed = time.perf_counter() - t0
    history.update(
        skipped=state["skipped"], steps=state["step"], epochs=state["epoch"],
        best_val=state["best_val"], seconds=elapsed,
        samples_per_s=samples / max(time.perf_counter() - session_start, 1e-9),
    )
    model.eval()
    return history


def _adopt_normalizer(model: WorldModel, dataset: Dataset) -> None:
    """Give a fresh model (identity statistics) the data set's; a model that already has
    statistics (trained, or warm-started) keeps them, with a warning if they differ."""
    current = model.normalizer()
    identity = all(
        all(v == (1.0 if key.endswith("std") else 0.0) for v in values)
        for key, values in current.items()
    )
    if identity:
        model.set_normalizer(dataset.stats)
        return
    theirs = dataset.stats.to_dict()
    if any(not np.allclose(current[k], theirs[k], rtol=1e-4, atol=1e-6) for k in theirs):
        log.warning("%s keeps its own normalisation statistics, which differ from those of "
                    "%s (fine-tuning on another data set)", model.kind, dataset.path)


@torch.no_grad()
def _validation_loss(model: WorldModel, windows: Any, config: TrainConfig,
                     device: torch.device, epoch: int) -> float:
    """Mean held-out loss (eval mode, own RNG so training draws are unaffected)."""
    if windows is None:
        return math.nan
    was_training = model.training
    model.eval()
    n = len(windows) if not config.val_windows else min(config.val_windows, len(windows))
    total, count = 0.0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 7919 * (epoch + 1))
        for start in range(0, n, 256):
            idx = np.arange(start, min(start + 256, n))
            batch = {k: v.to(device) for k, v in windows.get_batch(idx).items()}
            loss = model(batch)["loss"]
            total += float(loss) * len(idx)
            count += len(idx)
    model.train(was_training)
    return total / max(count, 1)


def _log_images(writer: Any, model: WorldModel, windows: Any, tag: str, epoch: int,
                device: torch.device) -> None:
    """Predictions next to targets: an image grid for models that predict images, else a
    scatter of one-step predicted against true state change per dimension (held-out)."""
    if windows is None:
        return
    preview = getattr(model, "preview", None)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if preview is not None:
                idx = np.arange(min(4, len(windows)))
                batch = {k: v.to(device) for k, v in windows.get_batch(idx).items()}
                writer.add_image(f"{tag}/prediction_vs_target", preview(batch), epoch,
                                 dataformats="CHW")
                return
            idx = np.unique(np.linspace(0, len(windows) - 1, min(256, len(windows))).astype(int))
            batch = windows.get_batch(idx)
            ctx = batch["context"].to(device)
            z = torch.zeros(len(ctx), model.z_dim, device=device) if model.z_dim else None
            pred = model.step(ctx if model.ncond > 1 else ctx[:, 0],
                              batch["actions"][:, 0].to(device), z).cpu()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        last = batch["context"][:, -1]
        true_d = (batch["targets"][:, 0] - last).numpy()
        pred_d = (pred - last).numpy()
        dims = min(model.state_dim, 6)
        fig, axes = plt.subplots(1, dims, figsize=(2.6 * dims, 2.6), squeeze=False)
        for j in range(dims):
            ax = axes[0, j]
            ax.scatter(true_d[:, j], pred_d[:, j], s=3)
            lo, hi = float(true_d[:, j].min()), float(true_d[:, j].max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"state {j}: one-step change", fontsize=8)
            ax.set_xlabel("true", fontsize=8)
        axes[0, 0].set_ylabel("predicted", fontsize=8)
        writer.add_figure(f"{tag}/prediction_vs_target", fig, epoch)
        plt.close(fig)
    finally:
        model.train(was)


# ------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_horizon_error(
    model: WorldModel, dataset: Dataset, split: str = "test", horizon: int = 30,
    max_windows: int = 2048, batch_size: int = 256, per_dim: bool = False,
) -> np.ndarray:
    """Open-loop error of ``horizon``-step rollouts from held-out windows (eval mode).

    Returns the RMS error in raw state units per step ``[horizon]`` (over windows and
    state dimensions), or ``[horizon, S]`` per dimension with ``per_dim``. At most
    ``max_windows`` windows, evenly spaced. Stochastic models roll out with z = 0.
    """
    check_compatible(model, dataset)
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    windows = dataset.windows(split, model.ncond, horizon)
    n = len(windows)
    idx_all = np.unique(np.linspace(0, n - 1, min(n, max_windows)).astype(np.int64))
    was_training, was_mc = model.training, model.mc_dropout
    model.eval()
    model.mc_dropout = False
    device = next(model.parameters()).device
    sq = torch.zeros(horizon, model.state_dim, dtype=torch.float64)
    for start in range(0, len(idx_all), batch_size):
        batch = windows.get_batch(idx_all[start : start + batch_size])
        ctx = batch["context"].to(device)
        acts = batch["actions"].to(device)
        z = None
        if model.z_dim:
            z = torch.zeros(len(ctx), horizon, model.z_dim, device=device)
        frames = batch["context_images"].to(device) if model.image_shape else None
        pred = model.unroll(model.reset(ctx, frames), acts, z).states
        sq += ((pred - batch["targets"].to(device)) ** 2).sum(0).double().cpu()
    model.train(was_training)
    model.mc_dropout = was_mc
    mse = sq / len(idx_all)
    return (mse.sqrt() if per_dim else mse.mean(1).sqrt()).numpy()


# ------------------------------------------------------------------------ two phases
def train_stochastic(
    deterministic: WorldModel,
    dataset: Dataset,
    det_config: TrainConfig | None = None,
    sto_config: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    writer: Any = None,
    resume: bool = False,
    progress: bool = True,
    **latent: Any,
) -> tuple[WorldModel, dict[str, Any]]:
    """PPUU's schedule: train ``deterministic`` (a :class:`DeterministicModel`, or an
    ``ImageModel`` with ``z_dim=0``), then a :class:`StochasticModel` (or a cVAE
    ``ImageModel``) warm-started from it (``latent``: ``z_dim``, ``beta``,
    ``p_z``, ``z_dropout``, ``learned_prior``). Checkpoints go to
    ``checkpoint_dir/deterministic`` and ``checkpoint_dir/stochastic``; ``resume``
    continues whichever phase was interrupted. Returns ``(stochastic model, {"deterministic":
    history, "stochastic": history})``."""
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    h_det = train_model(deterministic, dataset, det_config, root / "deterministic" if root
                        else None, writer, resume, progress, tag="deterministic")
    if isinstance(deterministic, ImageModel):
        sto = ImageModel.from_deterministic(deterministic, **latent)
    else:
        sto = StochasticModel.from_deterministic(deterministic, **latent)
    h_sto = train_model(sto, dataset, sto_config, root / "stochastic" if root else None,
                        writer, resume, progress, tag="stochastic")
    return sto, {"deterministic": h_det, "stochastic": h_sto}
