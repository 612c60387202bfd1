"""planners/control_loop.py: the one closed-loop episode loop (done masks, batching, the
recorded info) and its users, whose results are the ones they gave before they shared it
(numbers recorded from the per-task loops they replaced)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldplan.planners.control_loop import LoopResult, Transition, run_episodes

torch.set_num_threads(1)


class Countdown:
    """``N`` toy episodes: the state counts steps; episode ``i`` terminates at step
    ``ends[i]`` (or truncates there when ``truncate[i]``); reward = the action."""

    def __init__(self, ends: list[int], truncate: list[bool] | None = None) -> None:
        self.ends = np.array(ends)
        self.truncate = np.array(truncate or [False] * len(ends))
        self.t = np.zeros(len(ends), dtype=np.int64)
        self.stepped: list[np.ndarray] = []  # the alive mask of every step call

    def reset(self) -> np.ndarray:
        self.t[:] = 0
        return self.t[:, None].astype(float)

    def step(self, action: np.ndarray, alive: np.ndarray) -> Transition:
        self.stepped.append(alive.copy())
        self.t[alive] += 1
        end = self.t >= self.ends
        return Transition(self.t[:, None].astype(float), np.asarray(action, float).reshape(-1),
                          end & ~self.truncate, end & self.truncate,
                          {"t": self.t.copy()})


def test_done_masks_lengths_and_returns() -> None:
    env = Countdown([2, 5, 3], truncate=[False, False, True])
    result = run_episodes(env.reset, env.step, lambda obs: np.full(len(obs), 2.0), 3, 10,
                          record=("t", "action"))
    assert result.steps == 5  # stops as soon as no episode runs
    assert result.lengths.tolist() == [2, 5, 3]
    assert result.returns.tolist() == [4.0, 10.0, 6.0]  # rewards of live steps only
    assert result.terminated.tolist() == [True, True, False]
    assert result.truncated.tolist() == [False, False, True]
    assert result.done.all()
    assert result.active.tolist() == [[True, True, True], [True, True, True],
                                      [False, True, True], [False, True, False],
                                      [False, True, False]]
    assert result.records["t"].shape == (5, 3) and result.records["action"].shape == (5, 3)
    # the live rows: step-major, batch order within a step
    assert result.live("t").tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 4, 5]
    assert result.obs[:, 0].tolist() == [2.0, 5.0, 3.0]


def test_max_steps_cuts_episodes_that_are_neither_terminated_nor_truncated() -> None:
    env = Countdown([2, 50])
    result = run_episodes(env.reset, env.step, lambda obs: np.ones(len(obs)), 2, 4)
    assert result.steps == 4 and result.lengths.tolist() == [2, 4]
    assert result.terminated.tolist() == [True, False] and not result.truncated.any()
    assert result.done.tolist() == [True, False]
    assert result.records == {}
    empty = run_episodes(env.reset, env.step, lambda obs: np.ones(len(obs)), 2, 0,
                         record=("t",))
    assert empty.steps == 0 and empty.active.shape == (0, 2)
    assert empty.live("t").shape == (0,)


def test_active_only_controller_sees_the_running_episodes() -> None:
    env = Countdown([1, 3, 2])
    seen: list[int] = []

    def controller(obs: np.ndarray) -> np.ndarray:
        seen.append(len(obs))
        return np.arange(1, len(obs) + 1, dtype=float)

    result = run_episodes(env.reset, env.step, controller, 3, 10, active_only=True,
                          record=("action",))
    assert seen == [3, 2, 1]
    # the actions of the running episodes, zeros where an episode had ended
    assert result.records["action"].tolist() == [[1, 2, 3], [0, 1, 2], [0, 1, 0]]
    assert result.returns.tolist() == [1.0, 4.0, 5.0]
    assert [m.tolist() for m in env.stepped] == result.active.tolist()


def test_a_full_batch_controller_sees_every_episode_and_steps_without_reward() -> None:
    seen: list[int] = []

    def step(action: np.ndarray, alive: np.ndarray) -> Transition:
        return Transition(np.zeros((4, 1)), terminated=np.array([True, False, False, False]))

    result = run_episodes(lambda: np.zeros((4, 1)), step,
                          lambda obs: seen.append(len(obs)) or np.zeros(len(obs)), 4, 3)
    assert seen == [4, 4, 4] and result.lengths.tolist() == [1, 3, 3, 3]
    assert (result.returns == 0).all() and isinstance(result, LoopResult)


def test_episodes_a_reset_marks_done_never_run() -> None:
    """A reset that returns a Transition (episodes that ended in a warm-up): those are
    done from the start, never stepped nor shown to an active-only controller."""
    env = Countdown([2, 3, 4])
    seen: list[int] = []

    def reset() -> Transition:
        return Transition(env.reset(), terminated=np.array([False, True, False]),
                          truncated=np.array([False, True, True]))

    def controller(obs: np.ndarray) -> np.ndarray:
        seen.append(len(obs))
        return np.ones(len(obs))

    result = run_episodes(reset, env.step, controller, 3, 10, active_only=True,
                          record=("t",))
    assert seen == [1, 1]  # only the first episode runs, for its 2 steps
    assert result.steps == 2 and result.lengths.tolist() == [2, 0, 0]
    assert result.returns.tolist() == [2.0, 0.0, 0.0]
    # terminated wins over truncated, as at a step
    assert result.terminated.tolist() == [True, True, False]
    assert result.truncated.tolist() == [False, False, True]
    assert result.active.tolist() == [[True, False, False], [True, False, False]]
    assert [m.tolist() for m in env.stepped] == result.active.tolist()
    assert result.live("t").tolist() == [1, 2]
    # every episode over at the start: no step, no controller call; the obs is unwrapped
    calls: list[int] = []
    over = run_episodes(lambda: Transition(np.zeros((2, 1)), truncated=np.ones(2, bool)),
                        env.step, lambda obs: calls.append(1) or np.ones(len(obs)), 2, 5)
    assert calls == [] and over.steps == 0 and over.active.shape == (0, 2)
    assert over.truncated.all() and not over.terminated.any()
    assert over.lengths.tolist() == [0, 0] and over.obs.shape == (2, 1)
    # a full-batch controller may take any observation object, here a tuple
    pair = run_episodes(lambda: (np.zeros(2), "ctx"), lambda a, alive: Transition(
        (a, "ctx"), terminated=np.ones(2, bool)), lambda obs: obs[0] + 1, 2, 3)
    assert pair.steps == 1 and pair.obs[0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be a positive number of episodes"),
    ({"n": True}, "n must be"),
    ({"max_steps": -1}, "max_steps must be an int >= 0"),
    ({"max_steps": 2.5}, "max_steps must be"),
    ({"record": "t"}, "record must be a collection of key names"),
    ({"record": ("nope",)}, "record names 'nope', which the step does not give"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message) -> None:
    env = Countdown([2, 2])
    args = {"n": 2, "max_steps": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_episodes(env.reset, env.step, lambda obs: np.ones(len(obs)), **args)
    with pytest.raises(ValueError, match="was not recorded"):
        run_episodes(env.reset, env.step, lambda obs: np.ones(len(obs)), 2, 3).live("t")


# ------------------------------------------------------------------------------ users
# What each user gave with its own loop (recorded numbers). Counts and outcomes are exact;
# sums of floats are compared to rounding: float64 sums to 1e-12 relative, float32 planning
# to 1e-6, because BLAS and torch kernels round differently on other CPUs (on an AVX-512
# EPYC the truck's LQR sum differs in the 15th digit, MPPI's returns in the 8th).

def test_truck_simulate_gives_the_numbers_of_its_own_loop() -> None:
    from worldplan.envs.truck import TruckTaskModel, simulate
    from worldplan.experiments.truck import TruckConfig, evaluation_starts, summarise
    from worldplan.experiments.truck_baselines import CascadeController, LQRController

    cfg = TruckConfig(episodes=40, seed=3)
    p = cfg.params()
    starts = evaluation_starts(cfg)
    expected = {  # success, strict success, steps, sum of final poses, of trajectories
        "lqr": (0.35, 0.325, 889, 1046.820232322625, 78333.32050520419, [0, 19, 21, 0, 0]),
        "cascade": (1.0, 0.575, 2054, 554.3898926101594, 76712.89726718166,
                    [0, 40, 0, 0, 0]),
    }
    for name, ctrl in (("lqr", LQRController(p)), ("cascade", CascadeController(p))):
        for full_batch in (False, True):
            r = simulate(starts, ctrl, p, full_batch=full_batch)
            m = summarise(TruckTaskModel(p), r)
            got = (m["success_rate"], m["strict_success_rate"], int(r.steps.sum()),
                   float(r.final.sum()), float(r.trajectory.sum()),
                   np.bincount(r.outcome, minlength=5).tolist())
            want = expected[name]
            assert got[:3] == want[:3] and got[5] == want[5], (name, full_batch)
            assert got[3:5] == pytest.approx(want[3:5], rel=1e-12, abs=0), (name, full_batch)
            assert r.trajectory.flags["C_CONTIGUOUS"]
            assert (r.trajectory[:, 0] == starts).all()
    cut = simulate(starts, CascadeController(p), p, max_steps=20)
    assert (cut.steps == 20).all() and cut.trajectory.shape == (40, 21, 4)
    assert (cut.outcome == 4).all()  # every episode timed out


def test_mpc_controller_gives_the_numbers_of_its_own_loop() -> None:
    from worldplan.envs.gym_tasks import make_vector_env
    from worldplan.envs.gym_tasks.pendulum import PendulumTaskModel
    from worldplan.planners.mpc import MPPI, RecedingHorizonController

    tm = PendulumTaskModel()
    venv = make_vector_env("Pendulum-v1", 3)
    planner = MPPI(tm.step, tm.cost, tm.action_low, tm.action_high, 10, samples=100,
                   noise_sigma=1.0, seed=0)
    res = RecedingHorizonController(planner).run(venv, seed=5, max_steps=25, progress=False,
                                                 record=True)
    venv.close()
    assert res.returns.tolist() == pytest.approx([-139.53765125091587, -8.115613086816138,
                                                  -121.9186301365056], rel=1e-6, abs=0)
    assert res.lengths.tolist() == [25, 25, 25] and len(res.plan_ms) == 25
    assert float(res.transitions["action"].astype(np.float64).sum()) == pytest.approx(
        -17.27705780044198, rel=1e-6, abs=0)
    assert res.transitions["obs"].shape == (75, 3)


def test_random_data_gives_the_numbers_of_its_own_loop() -> None:
    from worldplan.experiments.mujoco import random_episodes

    eps = random_episodes("Pendulum-v1", 250, seed=4, max_episode_steps=90)
    assert [len(e["actions"]) for e in eps] == [90, 90, 70]
    assert [len(e["states"]) for e in eps] == [91, 91, 71]
    assert float(sum(e["states"].astype(np.float64).sum() for e in eps)) == 267.92763561941683
    assert float(sum(e["costs"].astype(np.float64).sum() for e in eps)) == 1756.730545066297


def test_navigation_gives_the_numbers_of_its_own_loop() -> None:
    from worldplan.envs.navigation import Navigation2DEnv, NavigationParams
    from worldplan.experiments.navigation import NavigationConfig, run_episode

    cfg = NavigationConfig(n_particles=60, max_steps=120)
    env = Navigation2DEnv(params=NavigationParams(), map_config=cfg.map,
                          max_steps=cfg.max_steps)
    rec = run_episode(env, cfg, 1, snapshots=3)
    assert (rec.success, rec.steps, rec.collisions) == (True, 106, 0)
    assert rec.true.shape == rec.estimate.shape == (107, 2)
    assert float(rec.true.sum()) == 628.6644295792735
    assert float(rec.estimate.sum()) == 628.0369786523489
    assert [step for step, _ in rec.particles] == [0, 53, 106]
