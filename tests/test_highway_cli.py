"""``worldplan highway`` on the command line: ``--help`` shows the values a run uses, and
an existing run takes the settings of the stages a command runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from worldplan.experiments.cli import main
from worldplan.experiments.config import save_yaml
from worldplan.experiments.highway import quick_config
from worldplan.experiments.runs import Run


def _help(capsys, monkeypatch, *flags: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")  # one column: a field's help follows its flag
    with pytest.raises(SystemExit) as info:
        main(["highway", "train-policy", *flags, "--help"])
    assert info.value.code == 0
    return re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out)


def _default(text: str, flag: str) -> str:
    after = text.split(f"{flag} INT", 1)[1]
    return re.search(r"\(default: ([^)]*)\)", after.split("--", 1)[0]).group(1)


def test_help_shows_the_policy_context_it_takes(capsys, monkeypatch) -> None:
    text = _help(capsys, monkeypatch)
    assert _default(text, "--policy.ncond") == "2"  # the world model's, not the placeholder 0
    assert "--model.ncond 2" in text
    text = _help(capsys, monkeypatch, "--model.ncond", "4")
    assert _default(text, "--policy.ncond") == "4" and _default(text, "--model.ncond") == "4"
    text = _help(capsys, monkeypatch, "--model.ncond", "4", "--policy.ncond", "10")
    assert _default(text, "--policy.ncond") == "10"


def _made_run(tmp_path) -> Path:
    """A highway run whose collect, train-model and train-policy stages completed with
    the quick preset (markers and config only: the checks below run before any work)."""
    run = Run.create(tmp_path / "r", "highway")
    save_yaml(quick_config(), run.config_path)
    for stage in ("collect", "train-model", "train-policy"):
        run.finish_stage(stage, run.start_stage(stage, {"stage": stage}))
    return run.path


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["highway", *args])
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("worldplan: error:")]
    assert info.value.code == 2 and len(lines) == 1
    return lines[0]


def test_policy_settings_on_an_existing_run(tmp_path, capsys) -> None:
    path = _made_run(tmp_path)
    line = _error(capsys, "train-policy", "--run", str(path), "--model.hidden", "32")
    assert "made its train-model stage with model.hidden = 64; train-policy cannot" in line
    line = _error(capsys, "evaluate", "--run", str(path), "--policy.lr", "0.5")
    assert "policy.lr is a setting of train-policy, which evaluate does not read" in line
    # a policy setting is accepted for train-policy: the stage itself runs (and stops at
    # the missing data set of this marker-only run)
    line = _error(capsys, "train-policy", "--run", str(path), "--policy.lr", "0.0005")
    assert "data set" in line or "dataset" in line
    assert yaml.safe_load((path / "config.yaml").read_text())["policy"]["lr"] == 0.0005


def test_a_policy_context_shorter_than_the_model_s_fails_before_any_file(tmp_path,
                                                                          capsys) -> None:
    line = _error(capsys, "train-policy", "--run", str(tmp_path / "new"), "--policy.ncond", "1")
    assert "policy.ncond 1 is shorter than the world model's context (model.ncond 2)" in line
    assert not (tmp_path / "new").exists()
