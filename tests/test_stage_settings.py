"""The stage skeleton with other settings on an existing run (experiments/cli.py): a
command may change the settings of the stages it runs and of later ones, never those of
an earlier stage that made its outputs; the settings used are recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from worldplan.experiments import cli
from worldplan.experiments.runs import Run
from worldplan.experiments.tasks import Task


@dataclass
class Collect:
    n: int = 3


@dataclass
class Model:
    width: int = 4


@dataclass
class Policy:
    lr: float = 0.1
    seeds: tuple[int, ...] = (0,)


@dataclass
class Evaluate:
    methods: tuple[str, ...] = ("a",)


@dataclass
class ToyConfig:
    seed: int = 0
    device: str = "cpu"
    episodes: int = 2
    collect: Collect = field(default_factory=Collect)
    model: Model = field(default_factory=Model)
    policy: Policy = field(default_factory=Policy)
    evaluate: Evaluate = field(default_factory=Evaluate)


def _stage(name: str, section: str):
    def run_stage(config: ToyConfig, run: Run) -> None:
        """A toy stage: logs the section it was run with."""
        value = getattr(config, section)
        with (run.path / "log.txt").open("a") as f:
            f.write(f"{name} {value}\n")
        run.update_metrics(name, {"value": str(value)})

    return run_stage


def _task(sections: bool = True) -> Task:
    return Task(name="toy", config_cls=ToyConfig, presets={"default": ToyConfig},
                stages={"collect": _stage("collect", "collect"),
                        "train-model": _stage("train-model", "model"),
                        "train-policy": _stage("train-policy", "policy"),
                        "evaluate": _stage("evaluate", "evaluate")},
                sections={"collect": ("collect",), "train-model": ("model",),
                          "train-policy": ("policy",),
                          "evaluate": ("evaluate", "episodes", "policy.seeds")}
                if sections else {})


def _cli(monkeypatch, capsys, *args: str, sections: bool = True) -> tuple[int, str]:
    monkeypatch.setattr(cli, "load_task", lambda name: _task(sections))
    with pytest.raises(SystemExit) as info:
        cli.main(["toy", *args])
    return info.value.code, capsys.readouterr().err


def _log(run: Path) -> list[str]:
    return [ln.split()[0] for ln in (run / "log.txt").read_text().splitlines()]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


@pytest.fixture
def done(tmp_path, monkeypatch, capsys) -> Path:
    run = tmp_path / "r"
    assert _cli(monkeypatch, capsys, "all", "--run", str(run))[0] == 0
    assert _log(run) == ["collect", "train-model", "train-policy", "evaluate"]
    return run


def test_a_stage_runs_again_with_its_own_settings_and_records_them(done, monkeypatch,
                                                                   capsys) -> None:
    code, err = _cli(monkeypatch, capsys, "train-policy", "--run", str(done),
                     "--policy.lr", "0.5")
    assert code == 0, err
    assert _log(done)[4:] == ["train-policy"]  # nothing earlier ran again
    config = yaml.safe_load((done / "config.yaml").read_text())
    assert config["policy"]["lr"] == 0.5 and config["model"]["width"] == 4
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["train-policy"]["_settings"] == {"policy.lr": 0.5}
    assert "lr=0.5" in metrics["train-policy"]["value"]
    marker = json.loads((done / "stages" / "train-policy.done.json").read_text())
    assert marker["settings"] == {"policy.lr": 0.5} and marker["previous"] == {"policy.lr": 0.1}
    # the evaluation was of the earlier policy: it is no longer complete, and its next run
    # is the run's own record (the new settings are the run's)
    assert not (done / "stages" / "evaluate.done.json").exists()
    metrics = json.loads((done / "metrics.json").read_text())
    assert "evaluate" not in metrics and "a" in metrics["evaluate-earlier"]["value"]
    assert _cli(monkeypatch, capsys, "evaluate", "--run", str(done))[0] == 0
    assert {k for k in json.loads((done / "metrics.json").read_text())
            if k.startswith("evaluate")} == {"evaluate", "evaluate-earlier"}
    # the same command again: the stage is complete with these settings, so it is skipped
    assert _cli(monkeypatch, capsys, "train-policy", "--run", str(done), "--policy.lr",
                "0.5")[0] == 0
    assert _log(done)[4:] == ["train-policy", "evaluate"]


def test_an_earlier_stage_makes_later_completed_ones_run_again(done, monkeypatch,
                                                               capsys) -> None:
    assert _cli(monkeypatch, capsys, "train-model", "--run", str(done), "--model.width",
                "9")[0] == 0
    assert _log(done)[4:] == ["train-model"]
    assert not (done / "stages" / "train-policy.done.json").exists()
    assert (done / "stages" / "collect.done.json").exists()
    assert _cli(monkeypatch, capsys, "all", "--run", str(done))[0] == 0
    assert _log(done)[4:] == ["train-model", "train-policy", "evaluate"]


def test_all_with_a_policy_setting_skips_the_stages_before(done, monkeypatch, capsys) -> None:
    assert _cli(monkeypatch, capsys, "all", "--run", str(done), "--policy.lr", "0.2",
                "--evaluate.methods", "b")[0] == 0
    assert _log(done)[4:] == ["train-policy", "evaluate"]
    metrics = json.loads((done / "metrics.json").read_text())
    assert "b" in metrics["evaluate"]["value"] and metrics["evaluate"]["_settings"] == {
        "evaluate.methods": ["b"], "policy.lr": 0.2}


@pytest.mark.parametrize("args, message", [
    (["train-policy", "--model.width", "9"],
     "made its train-model stage with model.width = 4; train-policy cannot change it to 9"),
    (["train-policy", "--seed", "5"],  # read by every stage, the collection first
     "made its collect stage with seed = 0; train-policy cannot change it to 5"),
    (["evaluate", "--policy.lr", "0.5"],
     "policy.lr is a setting of train-policy, which evaluate does not read"),
])
def test_a_setting_of_an_earlier_stage_is_refused(done, monkeypatch, capsys, args,
                                                  message) -> None:
    before = _files(done)
    code, err = _cli(monkeypatch, capsys, *args[:1], "--run", str(done), *args[1:])
    lines = [ln for ln in err.splitlines() if ln.startswith("worldplan: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert _files(done) == before


def test_an_evaluation_with_its_own_settings_writes_its_own_record(done, monkeypatch,
                                                                   capsys) -> None:
    config = (done / "config.yaml").read_bytes()
    assert _cli(monkeypatch, capsys, "evaluate", "--run", str(done), "--policy.seeds", "1",
                "--seed", "7")[0] == 0
    assert (done / "config.yaml").read_bytes() == config
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["evaluate-policy.seeds_1-seed7"]["_settings"] == {"policy.seeds": [1],
                                                                     "seed": 7}
    assert _log(done)[4:] == ["evaluate"]


def test_without_sections_a_making_stage_refuses_any_change(tmp_path, monkeypatch,
                                                            capsys) -> None:
    run = tmp_path / "r"
    assert _cli(monkeypatch, capsys, "collect", "--run", str(run), sections=False)[0] == 0
    code, err = _cli(monkeypatch, capsys, "train-model", "--run", str(run), "--policy.lr",
                     "0.5", sections=False)
    assert code == 2 and "was made with other settings (policy.lr: 0.1 -> 0.5)" in err


def test_sections_must_name_the_task_s_stages() -> None:
    with pytest.raises(ValueError, match="sections name unknown stage.s. train"):
        Task(name="toy", config_cls=ToyConfig, presets={"default": ToyConfig},
             stages={"evaluate": _stage("evaluate", "evaluate")}, sections={"train": ("x",)})
    assert _task().readers("policy.seeds") == ["train-policy", "evaluate"]
    assert _task().readers("policy.lr") == ["train-policy"]
    assert _task().readers("seed") == ["collect", "train-model", "train-policy", "evaluate"]


def test_an_evaluation_record_of_earlier_models_is_set_aside_too(done, monkeypatch,
                                                                 capsys) -> None:
    """An extra evaluation record (other evaluation settings) was made with the run's
    policies: when they are trained again with new settings, it is no longer complete and
    its metrics move to ``<record>-earlier``, like the run's own evaluation."""
    assert _cli(monkeypatch, capsys, "evaluate", "--run", str(done), "--seed", "7")[0] == 0
    assert (done / "stages" / "evaluate-seed7.done.json").exists()
    code, err = _cli(monkeypatch, capsys, "train-policy", "--run", str(done),
                     "--policy.lr", "0.5")
    assert code == 0, err
    metrics = json.loads((done / "metrics.json").read_text())
    assert "evaluate-seed7" not in metrics and "evaluate-seed7-earlier" in metrics
    assert not (done / "stages" / "evaluate-seed7.done.json").exists()
    # evaluating with the new policies makes the record again
    assert _cli(monkeypatch, capsys, "evaluate", "--run", str(done), "--seed", "7")[0] == 0
    assert "evaluate-seed7" in json.loads((done / "metrics.json").read_text())
