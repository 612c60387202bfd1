"""Interrupt a real ``worldplan`` process inside a training stage (SIGINT = Ctrl-C, and
SIGKILL), run the command again, and check that the stage is continued or redone, never
kept half-done: the log says which, the stage's completion marker is written, and the
trained model has all of its epochs."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from tests.interrupt_helpers import interrupt_in_stage, run_to_end

# A small truck run: 200 episodes, a 6-epoch emulator, a tiny curriculum, no MPC.
TRUCK = ["--preset", "quick", "--collect.episodes", "200", "--emulator.epochs", "6",
         "--policy.lessons", "2", "--policy.iterations-per-lesson", "4",
         "--policy.final-iterations", "4", "--policy.max-horizon", "20", "--episodes", "10",
         "--mpc.enabled", "false", "--video-episodes", "1"]


def _emulator_epochs(run) -> int:
    payload = torch.load(run / "checkpoints" / "emulator" / "last.pt", weights_only=True)
    return len(payload["training"]["history"]["train_loss"])


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    base = tmp_path_factory.mktemp("truck") / "run"
    log = base.parent / "log.txt"
    assert run_to_end(["truck", "collect", "--run", str(base), *TRUCK], log) == 0
    return base


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_truck_train_model_interrupted_then_rerun_finishes_every_epoch(collected, tmp_path, sig):
    run = tmp_path / "run"
    shutil.copytree(collected, run)
    log = tmp_path / "log.txt"
    args = ["truck", "train-model", "--run", str(run), *TRUCK]
    interrupt_in_stage(args, run, "train-model", sig, log, max_delay=2.0, seed=int(sig))
    assert not (run / "stages" / "train-model.done.json").exists()
    first = log.read_text()
    assert run_to_end(args, log) == 0, log.read_text()[-3000:]
    rerun = log.read_text()[len(first):]
    assert "train-model: interrupted earlier; continuing it from its checkpoints" in rerun
    assert (run / "stages" / "train-model.done.json").exists()
    assert not (run / "stages" / "train-model.started.json").exists()
    assert _emulator_epochs(run) == 6  # not the half-trained emulator
    metrics = json.loads((run / "metrics.json").read_text())
    assert "train-model" in metrics["stages"] and "test_error_30_steps" in metrics["emulator"]
    assert (run / "figures" / "emulator_training.png").stat().st_size > 1000


# Every task's every training stage, interrupted both ways; then `all` again finishes.
# Each case lengthens the stage it interrupts so that the signal lands inside it.
SLOW_CASES = {
    ("truck", "collect"): TRUCK[:2] + ["--collect.episodes", "20000", "--emulator.epochs", "1",
                                       "--emulator.batch-size", "2048", *TRUCK[6:]],
    ("truck", "train-model"): TRUCK,
    ("truck", "train-policy"): TRUCK[:4] + ["--emulator.epochs", "2", "--policy.lessons", "3",
                                            "--policy.iterations-per-lesson", "30",
                                            *TRUCK[10:]],
    ("highway", "collect"): ["--preset", "quick", "--evaluate.methods", "no-action", "mpc"],
    ("highway", "train-model"): ["--preset", "quick", "--evaluate.methods", "no-action"],
    ("highway", "train-policy"): ["--preset", "quick", "--evaluate.methods", "no-action"],
    ("mujoco", "collect"): ["--preset", "quick", "--loop.random-steps", "30000"],
    ("mujoco", "train-model"): ["--preset", "quick", "--loop.rounds", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("task, stage", list(SLOW_CASES))
def test_every_training_stage_survives_an_interrupt(task, stage, sig, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    args = [task, "all", "--run", str(run), *SLOW_CASES[(task, stage)]]
    interrupt_in_stage(args, run, stage, sig, log, max_delay=2.0, seed=hash((task, stage)))
    first = log.read_text()
    # Ctrl-C before a new run holds any result removes the folder (nothing to continue)
    fresh = not run.exists()
    assert not fresh or (sig == signal.SIGINT and stage == "collect")
    assert run_to_end(args, log, timeout=1800) == 0, log.read_text()[-3000:]
    rerun = log.read_text()[len(first):]
    assert f"{task} {stage}: interrupted earlier;" in rerun or fresh
    from worldplan.experiments.tasks import load_task

    for done in load_task(task).stage_order():
        assert (run / "stages" / f"{done}.done.json").exists(), done
    assert not list((run / "stages").glob("*.started.json"))
