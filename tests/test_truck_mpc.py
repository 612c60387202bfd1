"""experiments/truck_mpc: pre-stabilised MPC of the truck through the true kinematics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldplan.envs.truck import StartRegion, TruckParams, TruckTaskModel, simulate
from worldplan.experiments.truck import summarise
from worldplan.experiments.truck_baselines import CascadeController
from worldplan.experiments.truck_mpc import (
    MPCConfig,
    TruckMPC,
    cascade_feedback,
    evaluate_rows,
    make_planner,
    parse_row,
    residual_dynamics,
)

torch.set_num_threads(1)
P = TruckParams(dt=1.0, max_steps=150)
TM = TruckTaskModel(P)


def starts(n: int, seed: int, region: StartRegion | None = None) -> np.ndarray:
    return (region or StartRegion()).sample(np.random.default_rng(seed), n, P)


# Near but wide starts: short episodes (a fast test) where the trailer points far off.
NEAR = StartRegion(rear_x=(15.0, 18.0), theta1=(-1.4, 1.4))


def test_cascade_is_the_same_law_in_numpy_and_torch() -> None:
    s = starts(64, 3)
    cascade = CascadeController(P)
    np.testing.assert_allclose(cascade(torch.as_tensor(s)).numpy(), cascade(s), atol=1e-12)


def test_zero_correction_drives_the_feedback_law() -> None:
    x = torch.as_tensor(starts(16, 4), dtype=torch.float32)
    fb = cascade_feedback(P)
    step = residual_dynamics(TM.step, fb, TM.action_low, TM.action_high)
    expected = TM.step(x, fb(x)[:, None].clamp(TM.action_low, TM.action_high))
    torch.testing.assert_close(step(x, torch.zeros(16, 1)), expected)
    # a correction moves the steering and is clipped to the steering limit
    big = step.steering(x, torch.full((16, 1), 3.0))
    assert torch.allclose(big, TM.action_high.expand(16, 1))


@pytest.mark.parametrize("kind", ["gradient", "mppi"])
def test_mpc_through_the_kinematics_docks_precisely(kind: str) -> None:
    # Starts (trailer up to 80 degrees off) where the cascade alone misses the strict
    # criterion on some: the planned corrections must dock every one of them strictly.
    s = starts(3, 5, NEAR)
    cfg = MPCConfig(samples=16)
    _, metrics = evaluate_rows((f"truth_{kind}",), TM, None, None, s, cfg)
    m = metrics[f"mpc_truth_{kind}"]
    assert m["success_rate"] == 1.0 and m["strict_success_rate"] == 1.0
    assert m["final_position_error"] < 0.3 and m["final_angle_error_deg"] < 3.0
    assert m["control_steps"] > 15 and m["ms_per_control_step"] > 0


def test_horizon_is_cut_at_the_predicted_arrival() -> None:
    cfg = MPCConfig(horizon=90, margin=4)
    fb = cascade_feedback(P)
    planner = make_planner("gradient", TM, TM.step, cfg, feedback=fb)
    ctrl = TruckMPC(planner, TM, TM.step, fb, cfg)
    near = StartRegion((8.0, 8.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)).sample(
        np.random.default_rng(0), 1, P)
    ctrl(near)
    # rear 8 units out, straight: the wall is 8 steps away, so the horizon is about 12
    assert 10 <= planner.horizon <= 14


def test_unknown_row_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown MPC row"):
        evaluate_rows(("gradient_sideways",), TM, None, None, starts(2, 0), MPCConfig())
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("ddp", TM, TM.step, MPCConfig())


def test_replanning_every_k_steps_plans_a_kth_of_the_time_and_still_docks() -> None:
    """``@k`` rows plan on every k-th control step and follow the kept corrections in
    between; on the hard near starts they still dock strictly."""
    s = starts(3, 5, NEAR)
    calls = []
    cfg = MPCConfig()
    fb = cascade_feedback(P)
    planner = make_planner("gradient", TM, TM.step, cfg, feedback=fb)
    plan = planner.plan
    planner.plan = lambda *a, **k: calls.append(1) or plan(*a, **k)
    ctrl = TruckMPC(planner, TM, TM.step, fb, cfg, replan_every=3)
    result = simulate(s, ctrl, P, full_batch=True)
    steps = len(ctrl.step_seconds)
    assert len(calls) == -(-steps // 3)  # steps 0, 3, 6, ...
    m = summarise(TM, result)
    assert m["success_rate"] == 1.0 and m["strict_success_rate"] == 1.0
    _, metrics = evaluate_rows(("truth_gradient@3",), TM, None, None, s, cfg)
    assert metrics["mpc_truth_gradient@3"]["strict_success_rate"] == 1.0
    assert parse_row("gradient_bptt@4") == ("gradient_bptt", 4)
    assert parse_row("truth_mppi") == ("truth_mppi", None)
    for bad in ("gradient@0", "gradient@x", "ddp@2"):
        with pytest.raises(ValueError, match="unknown MPC row"):
            parse_row(bad)
    with pytest.raises(ValueError, match="replan_every"):
        TruckMPC(planner, TM, TM.step, fb, cfg, replan_every=0)


def test_cascade_alone_misses_the_strict_criterion_on_these_starts() -> None:
    """The starts of the docking test are not trivial: the feedback law alone is not
    strictly docked on all of them (so the test above measures the planner's part)."""
    result = simulate(starts(3, 5, NEAR), CascadeController(P), P)
    assert summarise(TM, result)["strict_success_rate"] < 1.0


def test_wilson_interval() -> None:
    from worldplan.experiments.truck_mpc import wilson

    lo, hi = wilson(0.5, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3  # the textbook values
    lo, hi = wilson(1.0, 1000)
    assert hi == 1.0 and 0.995 < lo < 0.997
    with pytest.raises(ValueError, match="n must"):
        wilson(0.5, 0)
