"""The highway evaluation: Wilson intervals, collision sides, forgiving rear hits, fresh
held-out recordings, privileged drivers, per-episode results pinned to the numbers of the
evaluation's earlier loop, and the oracle world model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldplan.envs.highway import Recording, View, record_traffic
from worldplan.envs.highway.oracle import ReplayOracle
from worldplan.envs.highway.privileged import IDMDriver
from worldplan.envs.highway.render import render_views
from worldplan.envs.highway.replay import COLLISION, FRONT, REAR, SIDE, ReplayBatch, classify_hits
from worldplan.experiments.highway_eval import (
    HeldOut,
    drive,
    eval_recording,
    expert_act,
    no_action,
    privileged_act,
    summarise,
    wilson,
)


@pytest.fixture(scope="module")
def recording() -> Recording:
    return record_traffic(steps=650, warmup=250, seed=5, progress=False)


# ------------------------------------------------------------- pinned per-episode results
def context_act(batch: ReplayBatch, st: torch.Tensor, fr: torch.Tensor) -> np.ndarray:
    """A deterministic stand-in for a learned policy that reads its whole context: brake
    while the cars channel of the newest frame shows a car just ahead, else restore the
    speed of the oldest context state; steer against the newest lateral velocity."""
    ahead = (fr[:, -1, 1, 30:55, 8:16] > 0).flatten(1).sum(1)  # [E] int, no rounding
    speed = st[:, :, 2].double()  # [E, K]
    accel = torch.where(ahead > 0, -2.0, 0.5 * (speed[:, 0] - speed[:, -1]))
    steer = -0.001 * st[:, -1, 3].double()
    return torch.stack([accel, steer], 1).numpy()


def _pinned_drives(r: Recording) -> dict[str, dict]:
    """Per-episode results of several methods (with the recorder's step counts and the
    number of controller calls) on fixed cars of the module's recording."""
    cars = r.complete_cars()[:10]
    held = HeldOut("t", r, cars, np.array([r.span(c)[0] for c in cars]))
    # the first car starts 4 steps before it leaves: its replay ends during the warm-up
    late = HeldOut("late", r, cars[:3], np.array([r.span(cars[0])[1] - 4,
                                                  *[r.span(c)[0] for c in cars[1:3]]]))
    alone = HeldOut("alone", r, cars[:1], late.starts[:1])

    def u_fn(st: torch.Tensor, fr: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (fr[:, -1, 1] > 0).flatten(1).sum(1).double() + a[:, 0].abs().double()

    def predict(st: torch.Tensor, fr: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return fr[:, -1].float() / 255.0

    runs = {
        "none": (held, no_action, (20, 1, 800), {}),
        "expert": (held, expert_act, (20, 1, 800), {}),
        "idm": (held, privileged_act(IDMDriver()), (20, 1, 800), {}),
        "context": (held, context_act, (5, 3, 300),
                    {"uncertainty": u_fn, "u_every": 7, "record": 0, "predict": predict}),
        "late": (late, expert_act, (10, 1, 60), {}),
        "alone": (alone, expert_act, (10, 1, 60), {}),
    }
    out = {}
    for name, (h, act, (ncond, context, steps), kw) in runs.items():
        seen: dict = {"calls": 0}

        def counted(batch, st, fr, act=act, seen=seen):
            seen["calls"] += 1
            seen["batch"] = batch
            return act(batch, st, fr)

        res = drive(h, counted, ncond, context, View(), steps, **kw)
        video = res.pop("video")
        res["steps"] = seen["batch"].steps.tolist() if "batch" in seen else None
        res["calls"] = seen["calls"]
        res["video"] = [len(video), sum(int(img.sum()) for img, _ in video),
                        sum(float(p.sum()) for _, p in video)]
        out[name] = res
    return out


@pytest.fixture(scope="module")
def pinned(recording: Recording) -> dict[str, dict]:
    return _pinned_drives(recording)


def test_drive_gives_the_per_episode_results_of_its_earlier_loop(
        pinned: dict[str, dict]) -> None:
    """Outcomes, collision kinds, distances, step counts, controller calls, the mean U and
    the video of every pinned drive are those recorded before the evaluation ran on
    planners/control_loop.py (tests/fixtures/highway_eval_episodes.json, same machine)."""
    expected = json.loads((Path(__file__).parent / "fixtures" / "highway_eval_episodes.json")
                          .read_text())
    assert list(pinned) == list(expected)
    for name, want in expected.items():
        got = pinned[name]
        for key in ("outcome", "outcome_no_rear", "hit", "replay_failed", "steps", "calls",
                    "set"):
            assert got[key] == want[key], (name, key)
        assert got["distance"] == pytest.approx(want["distance"], rel=1e-12), name
        assert got["uncertainty"] == pytest.approx(want["uncertainty"], rel=1e-9,
                                                   nan_ok=True), name
        assert got["video"][:2] == want["video"][:2], name
        assert got["video"][2] == pytest.approx(want["video"][2], rel=1e-6), name
    # a replay that ends during the warm-up is never driven; alone, nothing is
    assert pinned["late"]["replay_failed"] == [True, False, False]
    assert pinned["alone"]["calls"] == 0


def test_wilson_interval_matches_the_formula_and_stays_in_unit_range() -> None:
    lo, hi = wilson(15, 100)
    # reference values of the Wilson score interval for 15/100
    assert lo == pytest.approx(0.0931, abs=1e-3) and hi == pytest.approx(0.2320, abs=1e-3)
    assert wilson(0, 30)[0] == 0.0 and 0.0 < wilson(0, 30)[1] < 0.15
    assert wilson(30, 30)[1] == 1.0
    # more episodes, narrower interval
    assert np.diff(wilson(150, 1000)) < np.diff(wilson(15, 100))
    with pytest.raises(ValueError, match="n must be"):
        wilson(0, 0)


def test_collisions_are_classified_by_where_the_other_car_touches() -> None:
    ego_pos, head, size = np.zeros(2), np.array([1.0, 0.0]), np.array([4.8, 1.9])
    cars = np.array([[4.9, 0.2], [-4.7, -0.1], [1.0, 1.95], [30.0, 0.0], [0.0, 3.7]])
    sizes = np.tile([4.8, 1.9], (5, 1))
    touching, kind = classify_hits(ego_pos, head, size, cars, sizes)
    assert touching.tolist() == [True, True, True, False, False]
    assert kind[:3].tolist() == [FRONT, REAR, SIDE]
    # the ego's heading defines front: turned around, the front car is behind
    _, kind_back = classify_hits(ego_pos, -head, size, cars[:2], sizes[:2])
    assert kind_back.tolist() == [REAR, FRONT]


def test_forgiving_rear_hits_lets_a_braking_ego_continue(recording: Recording) -> None:
    r = recording
    cars = r.complete_cars()[:12]
    starts = np.array([r.span(c)[0] for c in cars])
    strict = ReplayBatch(r, cars, starts, ignore_rear=False, all_costs=False)
    lenient = ReplayBatch(r, cars, starts, ignore_rear=True, all_costs=False)
    brake = np.tile([-1.5, 0.0], (len(cars), 1))
    for _ in range(500):
        if lenient.done.all():
            break
        if not strict.done.all():
            strict.step(brake)
        lenient.step(brake)
    # one pass gives PPUU's outcome: the same as the strict batch's
    assert (lenient.outcome == strict.outcome).all()
    rear = (strict.outcome == COLLISION) & (strict.hit == REAR)
    assert rear.sum() >= 3, strict.hit  # braking in dense traffic: followers run into it
    # forgiven, some of those egos go on (until a collision that is not from behind,
    # or the segment's end)
    assert (lenient.outcome_no_rear[rear] != COLLISION).any() or \
        (lenient.event_distance[rear] < lenient.distance()[rear]).any()


def test_fresh_recording_without_a_held_out_car_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="holds no held-out car"):
        eval_recording(7, seconds=5.0, warmup=1.0, max_cars=10, cache=tmp_path)
    held = eval_recording(7, seconds=60.0, warmup=40.0, max_cars=5, cache=tmp_path)
    assert len(held.cars) == 5 and len(list(tmp_path.glob("eval-recording-seed7-*"))) == 2


def test_reference_drivers_order_as_expected(pinned: dict[str, dict]) -> None:
    rows = {name: summarise(pinned[name]) for name in ("expert", "none", "idm")}
    assert rows["expert"]["success_rate"] == 1.0
    assert rows["idm"]["success_rate"] > rows["none"]["success_rate"] + 0.3
    none = rows["none"]
    parts = none["collision_front"] + none["collision_rear"] + none["collision_side"]
    assert parts == pytest.approx(none["collision_rate"])
    assert none["success_no_rear"] >= none["success_rate"]
    lo, hi = none["success_ci95"]
    assert lo <= none["success_rate"] <= hi


def test_oracle_reproduces_the_recorded_frames_and_passes_gradients(recording: Recording
                                                                    ) -> None:
    """Under the recorded actions the oracle shows the recorded frame; braking shifts the
    car ahead away, and the gradient reaches the actions."""
    r = recording
    car = int(r.complete_cars()[0])
    t0 = r.span(car)[0] + 100
    view = View()
    ts = [t0 + 1, t0 + 2, t0 + 3]

    def frame(t: int, pos: np.ndarray, head: np.ndarray) -> np.ndarray:
        others = np.flatnonzero(r.valid[t])
        own = np.array([int(np.flatnonzero(others == car)[0])])
        img = render_views(pos[None], head[None], r.size[car][None], r.pos[t, others],
                           r.heading[t, others], r.size[others], own, r.road, view)
        return np.moveaxis(img[0], -1, 0)

    tgt = torch.as_tensor(np.stack([frame(t, r.pos[t, car], r.heading[t, car]) for t in ts]))
    st = np.concatenate([r.pos[ts, car], r.heading[ts, car] * r.speed[ts, car][:, None]], 1)
    oracle = ReplayOracle(tgt[None], torch.as_tensor(st, dtype=torch.float32)[None], view.res)
    ctx = torch.as_tensor(np.concatenate([r.pos[t0, car], r.heading[t0, car] * r.speed[t0, car]]),
                          dtype=torch.float32)[None, None]
    action = torch.as_tensor(r.action[t0, car], dtype=torch.float32)[None].requires_grad_(True)
    s1, f1 = oracle.step(ctx, action)
    assert torch.allclose(s1[0, :2], torch.as_tensor(st[0, :2], dtype=torch.float32), atol=1e-3)
    assert (f1[0] - tgt[0].float() / 255).abs().mean() < 0.01
    f1[:, 1].sum().backward()
    assert action.grad is not None and torch.isfinite(action.grad).all()
    with pytest.raises(ValueError, match="holds 3 recorded steps"):
        for _ in range(3):
            oracle.step(ctx, action.detach())


def test_a_privileged_driver_follows_each_new_batch(recording: Recording) -> None:
    """One act drives several held-out sets in turn (its per-batch reference is renewed)."""
    r = recording
    act = privileged_act(IDMDriver())
    for n in (3, 5):
        cars = r.complete_cars()[:n]
        held = HeldOut("t", r, cars, np.array([r.span(c)[0] for c in cars]))
        out = drive(held, act, 5, 1, View(), 30)
        assert len(out["outcome"]) == n


def test_front_rear_proximity_sees_the_follower_behind_a_nearer_leader() -> None:
    from worldplan.experiments.highway import cost_fn

    view = View()
    img = torch.zeros(1, 3, 117, 24)
    img[0, 2, 55:62, 10:14] = 1.0  # the ego at the centre
    state = torch.tensor([[0.0, 0.0, 8.0, 0.0]])
    lead = img.clone()
    lead[0, 1, 44:51, 10:14] = 1.0  # a leader close ahead
    both = lead.clone()
    both[0, 1, 68:75, 10:14] = 1.0  # and a follower a little farther behind
    pmax, pfr = cost_fn(view, 0.0, "max"), cost_fn(view, 0.0, "front-rear")
    assert pmax(both, state) == pytest.approx(pmax(lead, state).item())  # hidden by the max
    assert pfr(both, state) > pfr(lead, state) + 0.1
    assert pfr(lead, state) == pytest.approx(pmax(lead, state).item())
    with pytest.raises(ValueError, match="proximity"):
        cost_fn(view, 0.0, "sum")


def test_evaluation_figure_stacks_every_outcome_with_the_success_interval() -> None:
    from worldplan.experiments.common import figure_problems
    from worldplan.experiments.highway_figures import OUTCOMES, evaluation_figure

    def row(succ, front, rear, side, off, ci):
        return {"success_rate": succ, "collision_front": front, "collision_rear": rear,
                "collision_side": side, "offroad_rate": off,
                "timeout_rate": 1.0 - succ - front - rear - side - off, "success_ci95": ci}

    results = {"mpur": row(0.56, 0.28, 0.10, 0.05, 0.0, (0.51, 0.61)),
               "no-action": row(0.012, 0.55, 0.42, 0.015, 0.003, (0.005, 0.031))}
    fig = evaluation_figure(results)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == len(OUTCOMES) * len(results)
    # the first outcome's bars are the success rates, the first method on top
    assert [round(b.get_width(), 6) for b in bars[:2]] == [56.0, 1.2]
    assert bars[0].get_y() > bars[1].get_y()
    # each method's parts add up to all of its episodes
    for i in range(len(results)):
        assert sum(b.get_width() for b in bars[i::len(results)]) == pytest.approx(100.0)
    whisker = ax.lines[0].get_xdata()
    assert list(whisker) == pytest.approx([51.0, 61.0])
    assert not figure_problems(fig)
    with pytest.raises(ValueError, match="no evaluation rows"):
        evaluation_figure({})
