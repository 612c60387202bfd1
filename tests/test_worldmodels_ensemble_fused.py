"""worldmodels/ensemble.py's fused training loss (one autograd node per step, or for the
whole one-step loss) against a member-by-member computation with plain autograd, and
against the modules' own path to the bit; training.FlatAdam taking the gradients from the
fused backward's buffer and running the fused Adam kernel on its flat buffers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from worldplan.worldmodels.deterministic import mask_block
from worldplan.worldmodels.ensemble import BatchedLinear, Ensemble
from worldplan.worldmodels.training import FlatAdam, clip_gradients, make_optimizer

# timings and bit-exact comparisons on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(B: int, ncond: int, T: int, S: int = 3, A: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {"context": torch.randn(B, ncond, S, generator=g),
            "actions": torch.randn(B, T, A, generator=g),
            "targets": torch.randn(B, T, S, generator=g)}


def _model(ncond: int, layers: int, dropout: float, bootstrap: bool, k: int = 3,
           hidden: int = 5) -> Ensemble:
    torch.manual_seed(2)
    m = Ensemble(3, 2, ncond=ncond, k=k, hidden=hidden, layers=layers, dropout=dropout,
                 bootstrap=bootstrap)
    g = torch.Generator().manual_seed(4)
    m.set_normalizer({"state_mean": torch.randn(3, generator=g).tolist(),
                      "state_std": (torch.rand(3, generator=g) + 0.5).tolist(),
                      "action_mean": torch.randn(2, generator=g).tolist(),
                      "action_std": (torch.rand(2, generator=g) + 0.5).tolist(),
                      "delta_mean": (0.1 * torch.randn(3, generator=g)).tolist(),
                      "delta_std": (torch.rand(3, generator=g) + 0.2).tolist()})
    return m


def _member_by_member(m: Ensemble, batch: dict[str, torch.Tensor],
                      masks: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
    """The loss written out member by member with ``torch.mm`` and plain autograd:
    ``masks [T, L, >= K*B*H]`` as drawn for the training step, ``w [K, B]`` bootstrap."""
    lin = [mod for mod in m.encoder if isinstance(mod, BatchedLinear)]
    dec = [mod for mod in m.decoder.modules() if isinstance(mod, BatchedLinear)]
    B, T, _ = batch["actions"].shape
    n = m.k * B * m.hidden
    errs = []
    for k in range(m.k):
        def drop(h: torch.Tensor, t: int, i: int, k: int = k) -> torch.Tensor:
            h = torch.relu(h)
            if masks is None:
                return h
            return h * masks[t, i, :n].view(m.k, B, m.hidden)[k]

        ctx, preds = batch["context"], []
        for t in range(T):
            h = m.norm_state(ctx).flatten(1)
            for i, layer in enumerate(lin):
                h = drop(h @ layer.weight[k] + layer.bias[k], t, i)
            emb = m.norm_action(batch["actions"][:, t]) @ m.action_embed.weight[k] \
                + m.action_embed.bias[k]
            h = drop(h + emb, t, len(lin))
            for i, layer in enumerate(dec[:-1]):
                h = drop(h @ layer.weight[k] + layer.bias[k], t, len(lin) + 1 + i)
            out = h @ dec[-1].weight[k] + dec[-1].bias[k]
            nxt = ctx[:, -1] + out * m.delta_std + m.delta_mean
            preds.append(nxt)
            ctx = torch.cat([ctx[:, 1:], nxt[:, None]], 1)
        pred = torch.stack(preds, 1)
        errs.append((((pred - batch["targets"]) / m.delta_std) ** 2).mean(dim=(1, 2)))
    err = torch.stack(errs)  # [K, B]
    if w is None:
        return err.mean(1).sum()
    return ((w * err).sum(1) / w.sum(1).clamp_min(1.0)).sum()


@pytest.mark.parametrize("ncond, T, layers, dropout, bootstrap, train", [
    c for c in itertools.product((1, 2), (1, 3), (1, 2, 3), (0.0, 0.1), (True, False),
                                 (True, False))
    if not (c[4] and not c[5])])  # bootstrap weights only in training
def test_fused_loss_and_gradients_equal_the_member_by_member_computation(
        ncond: int, T: int, layers: int, dropout: float, bootstrap: bool,
        train: bool) -> None:
    # B * K * H = 7 * 3 * 5 = 105: no multiple of the 4 mask values in a random word
    m = _model(ncond, layers, dropout, bootstrap).train(train)
    batch = _batch(7, ncond, T)
    torch.manual_seed(9)
    out = m(batch)
    out["loss"].backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    # the same draws: the masks first (as drawn_masks / mask_block make them), then w
    torch.manual_seed(9)
    masks = mask_block(m._drops, (m.k, 7, m.hidden), T, batch["actions"]) if train else None
    w = torch.poisson(torch.ones(m.k, 7)) if (bootstrap and train) else None
    assert (masks is not None) == (train and dropout > 0)
    ref = _member_by_member(m, batch, masks, w)
    ref.backward()
    torch.testing.assert_close(out["loss"], ref.detach(), rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, m.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
    assert math.isfinite(out["mse"].item()) and not out["mse"].requires_grad


@pytest.mark.parametrize("T, dropout", [(1, 0.1), (1, 0.0), (3, 0.1)])
def test_fused_loss_is_the_modules_loss_to_the_bit(T: int, dropout: float) -> None:
    """The modules' path (each dropout layer drawing its own mask, the rollout through
    the layers) gives the same loss and gradients bit for bit."""
    runs = []
    for modules in (False, True):
        m = _model(2, 2, dropout, True).train()
        if modules:
            m._drops = []  # the layers draw their own masks: the loss goes through them
        torch.manual_seed(5)
        out = m(_batch(7, 2, T))
        out["loss"].backward()
        runs.append([out["loss"].detach(), out["mse"]] + [p.grad for p in m.parameters()])
        assert all(not d._queue for d in m.dropout_layers())
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_eval_mc_dropout_and_frozen_masks_go_through_the_modules() -> None:
    """Masks the fused path does not draw (MC-dropout in eval mode, frozen masks) leave
    the loss to the modules: with dropout forced on in eval mode the loss differs from
    the plain eval loss, and two evaluations with frozen masks agree."""
    m = _model(1, 2, 0.5, False).eval()
    batch = _batch(7, 1, 1)
    plain = m(batch)["loss"]
    m.mc_dropout = True
    torch.manual_seed(0)
    mc = m(batch)["loss"]
    assert not torch.equal(plain, mc)
    with m.frozen_masks():
        assert torch.equal(m(batch)["loss"], m(batch)["loss"])


def test_window_shapes_are_checked() -> None:
    m = _model(1, 2, 0.1, True).train()
    batch = _batch(7, 1, 1)
    with pytest.raises(ValueError, match="targets must have shape"):
        m({**batch, "targets": batch["targets"][:, :, :2]})
    with pytest.raises(ValueError, match="context must have shape"):
        m({**batch, "context": batch["context"][:, :, :2]})


def test_flat_adam_takes_the_gradients_from_the_fused_backward_buffer() -> None:
    m = _model(1, 2, 0.1, True).train()
    params = list(m.parameters())
    opt = make_optimizer(params, 1e-3, flat=True)
    assert isinstance(opt, FlatAdam)
    m(_batch(7, 1, 1))["loss"].backward()
    base, o = params[0].grad.data_ptr(), 0
    for p in params:  # one buffer, parameter after parameter
        assert p.grad.data_ptr() == base + 4 * o
        o += p.numel()
    expected = torch.cat([p.grad.reshape(-1) for p in params])
    norm = clip_gradients(params, 1e-3, opt)
    assert opt._g.data_ptr() == base  # used in place, not gathered by a copy
    factor = torch.clamp(1e-3 / (norm + 1e-6), max=1.0)
    assert torch.equal(opt._g, expected * factor)
    opt.step()


@pytest.mark.parametrize("hidden, flat", [(64, True), (5, False)])
def test_flat_fused_adam_is_the_per_parameter_fused_adam_to_the_bit(hidden: int,
                                                                     flat: bool) -> None:
    """One fused-kernel call over the flat buffers where every parameter but the last
    ends on a multiple of 64 values (hidden 64); otherwise make_optimizer keeps the
    per-parameter fused Adam (hidden 5)."""
    runs, states = [], []
    for flat_opt in (False, True):
        m = _model(2, 2, 0.1, True, k=2, hidden=hidden).train()
        opt = make_optimizer(m.parameters(), 1e-2, 1e-3, fused=True, flat=flat_opt)
        assert isinstance(opt, FlatAdam) == (flat_opt and flat)
        params = list(m.parameters())
        torch.manual_seed(3)
        hist = []
        for i in range(8):
            for T in (1, 2):  # one-step and rollout windows
                opt.param_groups[0]["lr"] = 1e-2 / (1 + i)
                loss = m(_batch(7, 2, T))["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                hist += [loss.item(), clip_gradients(params, 0.5, opt).item()]
                opt.step()
        runs.append((hist, m.state_dict()))
        states.append(opt.state_dict())
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    for i, st in states[0]["state"].items():
        assert all(torch.equal(st[k], states[1]["state"][i][k]) for k in st)
