"""worldmodels/training.py's FlatAdam: the foreach Adam (and clip_grad_norm_) to the bit on
one flat buffer, a checkpoint in torch.optim.Adam's layout, the per-parameter fallback for
a parameter without a gradient, and train_model's results unchanged by it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from worldplan.worldmodels import (
    DeterministicModel,
    TrainConfig,
    load_dataset,
    train_model,
    write_dataset,
)
from worldplan.worldmodels import training as tr
from worldplan.worldmodels.ensemble import Ensemble
from worldplan.worldmodels.synthetic import toy_episodes
from worldplan.worldmodels.training import FlatAdam, clip_gradients, make_optimizer

# timings and bit-exact comparisons on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(ncond: int = 2, steps: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"context": torch.randn(16, ncond, 3, generator=g),
            "actions": torch.randn(16, steps, 2, generator=g),
            "targets": torch.randn(16, steps, 3, generator=g)}


def _train(model: torch.nn.Module, opt, batch: dict, steps: int, clip: float) -> list[float]:
    """``steps`` steps of train_model's update; the losses and gradient norms."""
    params = list(model.parameters())
    torch.manual_seed(5)  # the same dropout masks and bootstrap weights for both runs
    out = []
    for i in range(steps):
        opt.param_groups[0]["lr"] = 1e-2 / (1 + i)  # as a schedule does
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        out += [loss.item(), clip_gradients(params, clip, opt).item()]
        opt.step()
    return out


@pytest.mark.parametrize("kind, weight_decay, clip", [
    ("deterministic", 0.0, 1.0), ("deterministic", 1e-3, 1e-3), ("ensemble", 0.0, 0.5)])
def test_flat_adam_equals_the_foreach_adam_to_the_bit(kind: str, weight_decay: float,
                                                      clip: float) -> None:
    def fresh() -> torch.nn.Module:
        torch.manual_seed(1)
        if kind == "ensemble":
            return Ensemble(3, 2, ncond=2, k=3, hidden=32).train()
        return DeterministicModel(3, 2, ncond=2, hidden=32).train()

    a, b = fresh(), fresh()
    opt_a = make_optimizer(a.parameters(), 1e-2, weight_decay)
    opt_b = make_optimizer(b.parameters(), 1e-2, weight_decay, flat=True)
    assert isinstance(opt_a, torch.optim.Adam) and isinstance(opt_b, FlatAdam)
    batch = _batch()
    # clip 1e-3 clips every step; the norms and losses agree to the bit too
    assert _train(a, opt_a, batch, 12, clip) == _train(b, opt_b, batch, 12, clip)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the optimiser state in torch.optim.Adam's layout, equal entry by entry
    da, db = opt_a.state_dict(), opt_b.state_dict()
    assert da["param_groups"] == db["param_groups"]
    for i, st in da["state"].items():
        assert set(st) == set(db["state"][i])
        assert all(torch.equal(st[k], db["state"][i][k]) for k in st)


def test_a_flat_state_loads_into_either_adam_and_continues_identically() -> None:
    def fresh() -> DeterministicModel:
        torch.manual_seed(2)
        return DeterministicModel(3, 2, ncond=2, hidden=16).train()

    batch = _batch()
    first = fresh()
    opt = make_optimizer(first.parameters(), 1e-2, flat=True)
    _train(first, opt, batch, 4, 1.0)
    # copies, as a checkpoint holds (both Adams hand out their live tensors, and
    # torch's Adam adopts a loaded state's tensors as they are)
    state, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(first.state_dict())
    runs = []
    for flat in (False, True):
        m = fresh()
        o = make_optimizer(m.parameters(), 1e-2, flat=flat)
        m.load_state_dict(weights)  # in place: the flat buffer sees it
        o.load_state_dict(copy.deepcopy(state))
        runs.append((_train(m, o, batch, 4, 1.0), m.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_a_parameter_without_gradient_falls_back_to_the_per_parameter_adam() -> None:
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    flat = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_r = make_optimizer(ref, 0.1)
    opt_f = make_optimizer(flat, 0.1, flat=True)
    for i in range(5):
        for params, opt in ((ref, opt_r), (flat, opt_f)):
            opt.zero_grad(set_to_none=True)
            # the second parameter takes no part in steps 1 and 2
            loss = (params[0] ** 2).sum() + (0 if i in (1, 2) else params[1].sum() ** 2)
            loss.backward()
            clip_gradients(params, 10.0, opt)
            opt.step()
    assert all(torch.equal(r, f) for r, f in zip(ref, flat, strict=True))
    assert [float(s["step"]) for s in opt_f.state_dict()["state"].values()] == [5.0, 3.0]


def test_parameters_given_new_storage_are_linked_again() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = make_optimizer([p], 0.5, flat=True)
    p.data = torch.full((4,), 2.0)  # as model.to(...) does
    opt.zero_grad()
    (p * torch.arange(4.0)).sum().backward()
    opt.step()
    assert p[0].item() == 2.0 and p[1].item() == pytest.approx(1.5)  # Adam's first step: lr
    assert opt.flat.data_ptr() == p.data_ptr()


def test_mixed_dtypes_are_refused_and_make_optimizer_falls_back() -> None:
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2).double())]
    with pytest.raises(ValueError, match="params must be dense floating-point tensors of one"):
        FlatAdam(params, 0.1)
    with pytest.raises(ValueError, match="params must hold at least one parameter"):
        FlatAdam([], 0.1)
    assert isinstance(make_optimizer(params, 0.1, flat=True), torch.optim.Adam)


def test_train_model_gives_the_results_of_the_per_parameter_adam(tmp_path: Path,
                                                                 monkeypatch) -> None:
    data = write_dataset(tmp_path / "toy", toy_episodes(), task="toy", dt=0.1, seed=1,
                         episodes_per_shard=10)
    ds = load_dataset(data)
    cfg = TrainConfig(epochs=2, batch_size=32, npred=2, seed=4, weight_decay=1e-4,
                      lr_schedule="cosine")

    def run() -> tuple[dict, dict]:
        torch.manual_seed(11)
        m = DeterministicModel(3, 2, ncond=2, hidden=32, dropout=0.1)
        return train_model(m, ds, cfg, progress=False), m.state_dict()

    hist_flat, w_flat = run()
    plain = tr.make_optimizer
    monkeypatch.setattr(tr, "make_optimizer",
                        lambda *a, flat=False, **k: plain(*a, **k))  # the foreach Adam
    hist, w = run()
    assert hist_flat["step_loss"] == hist["step_loss"]
    assert hist_flat["val_loss"] == hist["val_loss"]
    assert all(torch.equal(w[k], w_flat[k]) for k in w)


@pytest.mark.parametrize("kind, layers, batch_size", [
    ("deterministic", 2, 16), ("deterministic", 1, 7), ("ensemble", 2, 16)])
def test_masks_drawn_at_once_are_the_masks_drawn_layer_by_layer(kind: str, layers: int,
                                                                batch_size: int) -> None:
    """A training forward draws all its dropout masks in one call and rolls out without
    the model-state bookkeeping: the same values (and the generator left in the same
    state, so the bootstrap weights agree) as each layer drawing its own through
    ``rollout``; 7 x 32 values is no multiple of the 4 masks in a random word."""
    def fresh() -> torch.nn.Module:
        torch.manual_seed(1)
        if kind == "ensemble":
            return Ensemble(3, 2, ncond=2, k=3, hidden=32, layers=layers).train()
        return DeterministicModel(3, 2, ncond=2, hidden=32, layers=layers).train()

    batch = {k: v[:batch_size] for k, v in _batch().items()}
    at_once, one_by_one = fresh(), fresh()
    one_by_one._drops = []  # each layer draws its own masks
    one_by_one._open_loop = one_by_one.rollout  # and the loss rolls out through rollout
    runs = [_train(m, make_optimizer(m.parameters(), 1e-2), batch, 6, 1.0)
            + [torch.rand(()).item()] for m in (at_once, one_by_one)]
    assert runs[0] == runs[1]
    sa, sb = at_once.state_dict(), one_by_one.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not m._queue for m in at_once._drops)


def test_a_forward_that_leaves_masks_unused_is_an_error() -> None:
    from worldplan.worldmodels.deterministic import drawn_masks

    m = DeterministicModel(3, 2, hidden=8).train()
    with pytest.raises(RuntimeError, match="4 dropout layers left masks unused"):
        with drawn_masks(m._drops, (4, 8), 2, torch.zeros(1)):
            m.step(torch.zeros(4, 3), torch.zeros(4, 2))  # one step of two
    assert all(not d._queue for d in m._drops)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_and_tiny_second_moments_step_as_the_foreach_adam(dtype: torch.dtype) -> None:
    """Entries whose gradient is always zero, or so small that the second moment is
    subnormal, get the foreach Adam's values to the bit (the flat step's sqrt takes a
    faster path for them), over many steps and for a larger eps."""
    torch.manual_seed(0)
    first = torch.randn(64, dtype=dtype)
    first[16:32] = 1e-12 if dtype == torch.float32 else 1e-150  # tiny updates show
    ref = [torch.nn.Parameter(first), torch.nn.Parameter(torch.randn(8, 8, dtype=dtype))]
    flat = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    grad = torch.linspace(-1, 1, 64, dtype=dtype)  # the gradient of the first parameter
    grad[:16] = 0.0  # never a gradient
    grad[16:32] = 1e-20 if dtype == torch.float32 else 1e-158  # subnormal second moments
    opts = (make_optimizer(ref, 1e-2), make_optimizer(flat, 1e-2, flat=True))
    for i in range(30):
        if i == 15:
            for opt in opts:
                opt.param_groups[0]["eps"] = 1e-3
        for params, opt in zip((ref, flat), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            loss = (params[0] * grad).sum() + (params[1] ** 2).sum()
            loss.backward()
            opt.step()
    assert all(torch.equal(r, f) for r, f in zip(ref, flat, strict=True))
    second = opts[1].exp_avg_sq[:64]
    assert (second[:16] == 0).all() and (second[16:32] > 0).all()
    assert (second[16:32] < torch.finfo(dtype).tiny).all()
