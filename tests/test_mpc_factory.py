"""planners/mpc/factory.py: settings resolved against task defaults, the planner built
from them, a world model adapted to the planners, the LQR terminal cost; and ``--help``
showing the values a run will use."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from worldplan.envs.gym_tasks import make_task_model
from worldplan.planners.mpc import CEM, MPPI, dare
from worldplan.planners.mpc.factory import (
    MPCSettings,
    build_planner,
    lqr_terminal_cost,
    model_dynamics,
    resolve_settings,
)
from worldplan.worldmodels import DeterministicModel
from worldplan.worldmodels.ensemble import Ensemble

torch.set_num_threads(1)


def test_per_env_cem_defaults() -> None:
    ip = make_task_model("InvertedPendulum-v5")
    planner = build_planner("cem", lambda x, u: x, ip, MPCSettings(), ip.planning)
    assert isinstance(planner, CEM)
    # balancing needs white exploration noise and the elite mean; 100 x 3 keeps < 50 ms
    assert planner.beta == 0.0 and not planner.return_best
    assert (planner.samples, planner.iterations, planner.horizon) == (100, 3, 15)
    reacher = make_task_model("Reacher-v5")
    other = build_planner("cem", lambda x, u: x, reacher, MPCSettings(), reacher.planning)
    assert other.beta == 2.0 and other.return_best
    explicit = build_planner("cem", lambda x, u: x, ip, MPCSettings(beta=1.5), ip.planning)
    assert explicit.beta == 1.5
    assert ip.planning["terminal"] == "lqr" and "terminal" not in reacher.planning


def test_resolved_settings_have_no_placeholders_and_keep_explicit_values() -> None:
    ip = make_task_model("InvertedPendulum-v5")
    s = resolve_settings(MPCSettings(), "mppi", ip.planning)
    assert (s.horizon, s.samples, s.iterations) == (15, 200, 1)
    assert s.beta == 0.0 and s.cem_return == "mean" and s.terminal == "lqr"
    assert s.uncertainty_weight == 10.0
    assert resolve_settings(s, "mppi", ip.planning) == s  # idempotent
    mine = resolve_settings(MPCSettings(horizon=7, samples=33, terminal="state"), "mppi",
                            ip.planning)
    assert (mine.horizon, mine.samples, mine.terminal) == (7, 33, "state")
    bare = resolve_settings(MPCSettings(), "cem")  # no task defaults: the planner's own
    assert (bare.horizon, bare.samples, bare.elites, bare.iterations) == (15, 200, 20, 4)
    with pytest.raises(ValueError, match="unknown planner 'pid'"):
        resolve_settings(MPCSettings(), "pid")
    with pytest.raises(ValueError, match="mpc.terminal"):
        resolve_settings(MPCSettings(terminal="value"), "cem")


def test_model_dynamics_of_an_ensemble_and_a_single_model() -> None:
    torch.manual_seed(0)
    ens = Ensemble(3, 1, k=3, hidden=16)
    dyn, latent, unc = model_dynamics(ens)
    assert latent == 0 and unc is not None
    assert not any(p.requires_grad for p in ens.parameters()) and not ens.training
    x, u = torch.randn(5, 3), torch.randn(5, 1)
    var = unc(x, u)
    assert var.shape == (5,) and (var > 0).all()
    members = ens.rollout_members(x, u[:, None])[:, :, 0]
    torch.testing.assert_close(dyn(x, u), members.mean(0))  # the cached members' mean
    torch.testing.assert_close(dyn(x.clone(), u), ens.step(x, u))  # no cache: the model
    single = DeterministicModel(3, 1, hidden=8)
    d2, latent2, unc2 = model_dynamics(single)
    assert latent2 == 0 and unc2 is None
    torch.testing.assert_close(d2(x, u), single.step(x, u))
    planner = build_planner("mppi", dyn, make_task_model("Pendulum-v1"),
                            MPCSettings(horizon=4, samples=16), uncertainty=unc)
    assert isinstance(planner, MPPI) and planner.act(x[:2]).shape == (2, 1)


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient", "ilqr"])
def test_build_planner_refuses_a_model_of_another_size_before_any_work(name: str) -> None:
    tm = make_task_model("Pendulum-v1")  # 3-D states, 1-D actions
    calls = []

    def counting(model: torch.nn.Module) -> tuple:
        dyn, latent, unc = model_dynamics(model)

        def wrapped(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return dyn(x, u)
        wrapped.__wrapped__ = dyn  # type: ignore[attr-defined]
        return wrapped, latent, unc

    dyn, _, unc = counting(Ensemble(4, 1, k=2, hidden=8))
    with pytest.raises(ValueError, match="4-D states but the task's state_dim is 3"):
        build_planner(name, dyn, tm, MPCSettings(horizon=4, samples=16), uncertainty=unc)
    dyn, _, _ = counting(DeterministicModel(3, 2, hidden=8))
    with pytest.raises(ValueError, match="2-D actions but the task's action bounds are 1-D"):
        build_planner(name, dyn, tm, MPCSettings(horizon=4, samples=16))
    assert calls == []
    for field, value in (("horizon", -2), ("samples", -5), ("iterations", -1)):
        if field == "samples" and name in ("gradient", "ilqr"):
            continue  # no population
        with pytest.raises(ValueError, match=f"{field} must be at least"):
            build_planner(name, model_dynamics(DeterministicModel(3, 1, hidden=8))[0], tm,
                          MPCSettings(**{"horizon": 4, field: value}))
    planner = build_planner(name, model_dynamics(DeterministicModel(3, 1, hidden=8))[0], tm,
                            MPCSettings(horizon=4, samples=16))
    assert planner.state_dim == 3
    with pytest.raises(ValueError, match="state_dim 3"):
        planner.act(torch.zeros(2, 4))


def test_lqr_terminal_cost_of_a_linear_model() -> None:
    tm = make_task_model("InvertedPendulum-v5")
    a = torch.eye(4) + 0.04 * torch.tensor([[0, 0, 1, 0], [0, 0, 0, 1], [0, -1, 0, 0],
                                            [0, 25, 0, 0]], dtype=torch.float32)
    b = torch.tensor([[0.0], [0.0], [0.3], [-0.8]])

    def linear(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x @ a.T + u @ b.T

    terminal = lqr_terminal_cost(linear, tm, r=0.1)
    q, goal = tm.quadratic_cost()
    p = dare(a.double(), b.double(), q.double(), 0.1 * torch.eye(1, dtype=torch.float64))
    x = torch.tensor([[0.3, 0.05, -0.2, 0.1], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(terminal(x), ((x.double() @ p) * x.double()).sum(-1).float())
    assert terminal(x)[1] == 0 and (terminal(x)[0] > tm.state_cost(x)[0])
    assert lqr_terminal_cost(linear, make_task_model("Reacher-v5")) is None  # not quadratic
    with pytest.raises(ValueError, match="terminal_r"):
        lqr_terminal_cost(linear, tm, r=0.0)


def _help(*flags: str) -> str:
    out = subprocess.run([sys.executable, "-m", "worldplan", "mujoco", "evaluate", *flags,
                          "--help"], capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_shows_the_values_a_run_uses() -> None:
    text = _help()  # InvertedPendulum-v5 with CEM
    assert "--env InvertedPendulum-v5 --planner cem" in text
    line = next(ln for ln in text.splitlines() if "--mpc.samples" in ln)
    assert "(default: 100)" in line  # the env's CEM population, not the placeholder 0
    pend = _help("--env", "Pendulum-v1", "--planner", "mppi")
    assert "--env Pendulum-v1 --planner mppi" in pend
    assert "(default: 30)" in next(ln for ln in pend.splitlines() if "--mpc.horizon" in ln)
    assert "(default: 200)" in next(ln for ln in pend.splitlines() if "--max-steps" in ln)
