"""Every task says which settings each of its stages reads (``Task.sections``), so that
``worldplan <task> <stage> --run R --group.field V`` on an existing run works the same for
every task: the stage runs again with the new settings (and the later stages after it),
a setting of an earlier stage is refused with one line, and no file or metrics section of
the earlier settings outlives the stage that made it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from worldplan.experiments.cli import main
from worldplan.experiments.tasks import TASK_MODULES, load_task

torch.set_num_threads(1)

STAGED = ("truck", "highway", "mujoco", "navigation")


def _fields(cls: type, prefix: str = "") -> set[str]:
    """Every dotted field name of a dataclass config, sections included."""
    out = set()
    for f in dataclasses.fields(cls):
        out.add(prefix + f.name)
        kind = f.type if isinstance(f.type, type) else None
        if kind is None and f.default_factory is not dataclasses.MISSING:
            kind = type(f.default_factory())
        if kind is not None and dataclasses.is_dataclass(kind):
            out |= _fields(kind, f"{prefix}{f.name}.")
    return out


@pytest.mark.parametrize("name", STAGED)
def test_each_task_s_sections_name_its_stages_and_real_fields(name: str) -> None:
    task = load_task(name)
    assert list(task.sections) == task.stage_order()
    names = _fields(task.config_cls)
    for stage, prefixes in task.sections.items():
        assert prefixes, stage
        unknown = [p for p in prefixes if p not in names]
        assert not unknown, (stage, unknown)


def test_the_stages_that_read_a_setting() -> None:
    truck, mujoco = load_task("truck"), load_task("mujoco")
    assert truck.readers("policy.lr") == ["train-policy"]
    assert truck.readers("mpc.rows") == ["evaluate"]
    assert truck.readers("dt") == ["collect", "train-model", "train-policy", "evaluate"]
    assert mujoco.readers("loop.max_episode_steps") == ["collect", "train-model"]
    assert mujoco.readers("learn.epochs") == ["train-model"]
    assert mujoco.readers("planner") == ["train-model", "evaluate"]
    assert mujoco.readers("env") == ["collect", "train-model", "evaluate"]
    assert set(TASK_MODULES) - set(STAGED) == {"filters"}  # one stage, no model made


def _cli(*args: str, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code, capsys.readouterr().err


def _error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("worldplan: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _done(run: Path, stage: str) -> bool:
    return (run / "stages" / f"{stage}.done.json").exists()


# ------------------------------------------------------------------------------ truck
TRUCK_TINY = ["--preset", "quick", "--collect.episodes", "40", "--collect.max-steps", "12",
              "--emulator.epochs", "1", "--emulator.horizon-eval", "5",
              "--policy.lessons", "1", "--policy.iterations-per-lesson", "2",
              "--policy.final-iterations", "1", "--policy.max-horizon", "10",
              "--policy.batch-size", "16", "--episodes", "4", "--mpc.starts", "2",
              "--mpc.horizon", "10", "--video-episodes", "1", "--no-progress"]


@pytest.fixture(scope="module")
def truck_done(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("truck") / "run"
    with pytest.raises(SystemExit) as info:
        main(["truck", "all", "--run", str(run), *TRUCK_TINY])
    assert info.value.code == 0
    return run


@pytest.fixture
def truck_run(truck_done: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(truck_done, run)
    return run


def test_truck_markers_list_the_sections_each_stage_wrote(truck_run: Path) -> None:
    sections = {stage: json.loads((truck_run / "stages" / f"{stage}.done.json").read_text())
                ["sections"] for stage in ("collect", "train-model", "train-policy",
                                           "evaluate")}
    assert sections == {"collect": ["collect"], "train-model": ["emulator"],
                        "train-policy": ["train-policy"], "evaluate": ["evaluate"]}


def test_truck_policy_setting_reruns_train_policy_and_leaves_no_stale_policy(
        truck_run: Path, capsys) -> None:
    emulator = (truck_run / "checkpoints" / "emulator" / "best.pt").read_bytes()
    code, err = _cli("truck", "train-policy", "--run", str(truck_run),
                     "--policy.train-truth", capsys=capsys)
    assert code == 0, err
    assert (truck_run / "checkpoints" / "policy_truth.pt").is_file()
    assert set(_metrics(truck_run)["train-policy"]) == {"emulator", "truth", "_settings"}
    assert (truck_run / "checkpoints" / "emulator" / "best.pt").read_bytes() == emulator
    # the evaluation was of the earlier policies: forgotten, its metrics kept as -earlier
    assert not _done(truck_run, "evaluate")
    assert "evaluate" not in _metrics(truck_run) and "evaluate-earlier" in _metrics(truck_run)
    assert yaml.safe_load((truck_run / "config.yaml").read_text())["policy"]["train_truth"]
    # back to one policy: the truth one goes with the settings that made it
    code, err = _cli("truck", "all", "--run", str(truck_run), "--policy.no-train-truth",
                     capsys=capsys)
    assert code == 0, err
    assert not (truck_run / "checkpoints" / "policy_truth.pt").exists()
    metrics = _metrics(truck_run)
    assert set(metrics["train-policy"]) == {"emulator", "_settings"}
    assert "bptt_truth" not in metrics["evaluate"] and "bptt_emulator" in metrics["evaluate"]
    marker = json.loads((truck_run / "stages" / "train-policy.done.json").read_text())
    assert marker["settings"] == {"policy.train_truth": False}
    assert marker["previous"] == {"policy.train_truth": True}


def test_truck_emulator_setting_reruns_the_later_stages(truck_run: Path, capsys) -> None:
    data = _files(truck_run / "data")
    code, err = _cli("truck", "train-model", "--run", str(truck_run), "--emulator.epochs",
                     "2", capsys=capsys)
    assert code == 0, err
    assert _files(truck_run / "data") == data and _done(truck_run, "collect")
    metrics = _metrics(truck_run)
    assert metrics["train-model"]["_settings"] == {"emulator.epochs": 2}
    marker = json.loads((truck_run / "stages" / "train-model.done.json").read_text())
    assert marker["sections"] == ["emulator", "train-model"]
    assert {"train-policy-earlier", "evaluate-earlier"} <= set(metrics)
    assert not _done(truck_run, "train-policy") and not _done(truck_run, "evaluate")
    # the policy made through the earlier emulator stays until train-policy replaces it,
    # and no stage may build on it before
    before = (truck_run / "checkpoints" / "policy_emulator.pt").stat().st_mtime_ns
    files = _files(truck_run)
    code, err = _cli("truck", "evaluate", "--run", str(truck_run), capsys=capsys)
    assert code == 2 and ("stage train-policy of run " in _error(err)
                          and "was made with earlier settings; run it again first: "
                          "`worldplan truck train-policy --run " in _error(err))
    assert _files(truck_run) == files
    code, err = _cli("truck", "all", "--run", str(truck_run), capsys=capsys)
    assert code == 0, err
    assert (truck_run / "checkpoints" / "policy_emulator.pt").stat().st_mtime_ns != before
    assert all(_done(truck_run, s) for s in ("train-model", "train-policy", "evaluate"))


def test_truck_evaluation_setting_replaces_its_metrics(truck_run: Path, capsys) -> None:
    assert "mpc_gradient" in _metrics(truck_run)["evaluate"]
    code, err = _cli("truck", "all", "--run", str(truck_run), "--mpc.no-enabled",
                     capsys=capsys)
    assert code == 0, err
    evaluation = _metrics(truck_run)["evaluate"]
    assert "mpc_gradient" not in evaluation and "bptt_emulator" in evaluation
    assert evaluation["_settings"] == {"mpc.enabled": False}


def test_a_stage_that_fails_on_its_inputs_changes_no_file(truck_run: Path, capsys) -> None:
    """A stage reads its inputs before it removes its earlier outputs."""
    (truck_run / "checkpoints" / "policy_emulator.pt").write_bytes(b"PK\x03\x04torn")
    before = _files(truck_run)
    code, err = _cli("truck", "evaluate", "--run", str(truck_run), capsys=capsys)
    assert code == 2, err
    after = _files(truck_run)  # a started marker is new; every file there is as it was
    assert {k: after.get(k) for k in before} == before
    # with new settings the run takes them (config.yaml, markers); its outputs stay
    (truck_run / "checkpoints" / "emulator" / "best.pt").write_bytes(b"torn")
    before = {k: v for k, v in _files(truck_run).items()
              if not k.startswith("stages/") and k not in ("config.yaml", "metrics.json")}
    code, err = _cli("truck", "train-policy", "--run", str(truck_run), "--policy.lr", "0.01",
                     capsys=capsys)
    assert code == 2, err
    after = _files(truck_run)
    assert {k: after.get(k) for k in before} == before


@pytest.mark.parametrize("args, message", [
    (["train-policy", "--collect.episodes", "50"],
     "made its collect stage with collect.episodes = 40; train-policy cannot change it to 50"),
    (["train-policy", "--emulator.epochs", "3"],
     "made its train-model stage with emulator.epochs = 1; train-policy cannot change it to 3"),
    (["evaluate", "--policy.lr", "0.5"],
     "policy.lr is a setting of train-policy, which evaluate does not read"),
])
def test_truck_refuses_a_setting_of_an_earlier_stage(truck_run: Path, capsys, args,
                                                     message) -> None:
    before = _files(truck_run)
    code, err = _cli("truck", args[0], "--run", str(truck_run), *args[1:], capsys=capsys)
    assert code == 2 and message in _error(err)
    assert _files(truck_run) == before


# ------------------------------------------------------------------------------ mujoco
MUJOCO_TINY = ["--preset", "quick", "--env", "Pendulum-v1", "--model", "deterministic",
               "--planner", "cem", "--loop.random-steps", "40", "--loop.rounds", "1",
               "--loop.steps-per-round", "10", "--loop.max-episode-steps", "10",
               "--learn.epochs", "1", "--learn.hidden", "16", "--mpc.horizon", "4",
               "--mpc.samples", "16", "--mpc.elites", "4", "--mpc.iterations", "1",
               "--episodes", "1", "--max-steps", "5", "--no-video"]


def test_mujoco_model_setting_reruns_the_loop_from_the_random_data(tmp_path: Path,
                                                                   capsys) -> None:
    run = tmp_path / "run"
    code, err = _cli("mujoco", "all", "--run", str(run), *MUJOCO_TINY, capsys=capsys)
    assert code == 0, err
    random_data = (run / "data" / "episodes.npz").read_bytes()
    first = _metrics(run)["train"]
    assert first["env_steps"] == 40 + 10  # the random steps, then one round of MPC
    code, err = _cli("mujoco", "train-model", "--run", str(run), "--learn.epochs", "2",
                     capsys=capsys)
    assert code == 0, err
    # the loop starts again from collect's data, not from the earlier loop's
    assert (run / "data" / "episodes.npz").read_bytes() == random_data
    metrics = _metrics(run)
    assert metrics["train"]["env_steps"] == 50 and len(metrics["train"]["curve"]) == 1
    assert metrics["train-model"]["_settings"] == {"learn.epochs": 2}
    assert not _done(run, "evaluate") and "evaluate-earlier" in metrics
    # the random data's settings belong to collect
    before = _files(run)
    code, err = _cli("mujoco", "train-model", "--run", str(run), "--loop.random-steps",
                     "60", capsys=capsys)
    assert code == 2 and ("made its collect stage with loop.random_steps = 40; train-model "
                          "cannot change it to 60") in _error(err)
    assert _files(run) == before
    # an evaluation alone with another planner is its own record
    code, err = _cli("mujoco", "evaluate", "--run", str(run), "--planner", "mppi",
                     capsys=capsys)
    assert code == 0, err
    assert _metrics(run)["evaluate-planner_mppi"]["planner"] == "mppi"
    assert not _done(run, "evaluate") and _done(run, "evaluate-planner_mppi")


# ------------------------------------------------------------------------------ navigation
def test_navigation_evaluation_with_other_settings_is_its_own_record(tmp_path: Path,
                                                                     capsys) -> None:
    run = tmp_path / "run"
    tiny = ["--episodes", "1", "--n-particles", "30", "--max-steps", "20",
            "--figure-episodes", "1"]
    code, err = _cli("navigation", "evaluate", "--run", str(run), *tiny, capsys=capsys)
    assert code == 0, err
    code, err = _cli("navigation", "evaluate", "--run", str(run), "--speed", "0.5",
                     capsys=capsys)
    assert code == 0, err
    metrics = _metrics(run)
    assert metrics["evaluate-speed0.5"]["_settings"] == {"speed": 0.5}
    assert metrics["evaluate"]["episodes"] == 1
    assert (run / "figures" / "evaluate-speed0.5" / "maps_paths.png").is_file()
