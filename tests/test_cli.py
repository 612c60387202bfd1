"""The ``worldplan`` command: run folders, presets, overrides and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from worldplan.checkpoint import save_checkpoint
from worldplan.errors import UserError
from worldplan.experiments.cli import main
from worldplan.experiments.runs import Run
from worldplan.experiments.tasks import load_task


def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("worldplan: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope", "all"], "unknown task 'nope'"),
        (["truck", "fly"], "unknown stage 'fly'"),
        (["truck", "collect", "--preset", "huge"], "unknown preset 'huge'"),
        (["truck", "evaluate", "--resume", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_names_give_one_line_and_nonzero_exit(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(args, capsys)
    assert code != 0
    assert message in error_line(err)


def test_run_folder_of_another_task_is_refused(tmp_path, capsys):
    Run.create(tmp_path / "r", "highway")
    code, err = run_main(["truck", "evaluate", "--run", str(tmp_path / "r")], capsys)
    assert code != 0 and "belongs to task 'highway'" in error_line(err)


def test_overrides_reach_the_saved_config(tmp_path, capsys):
    run = tmp_path / "r"
    code, _ = run_main(["truck", "collect", "--preset", "quick", "--run", str(run), "--seed", "3",
                        "--collect.episodes", "40", "--collect.max-steps", "10"], capsys)
    assert code == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed"] == 3 and config["collect"]["episodes"] == 40
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["task"] == "truck" and manifest["generator"]["seed"] == 3
    assert json.loads((run / "metrics.json").read_text())["collect"]["episodes"] <= 40


def _truck_run_with_policy(tmp_path, state_dict) -> Run:
    run = Run.create(tmp_path / "r", "truck")
    (run.path / "metrics.json").write_text('{"keep": {"me": 1}}\n')
    save_checkpoint(run.checkpoints / "policy_emulator.pt",
                    {"kind": "policy", "task": "truck", "class": "MLPPolicy", "config": {},
                     "state_dict": state_dict, "meta": {}})
    return run


def test_mismatched_checkpoint_is_named_and_nothing_is_overwritten(tmp_path, capsys):
    bad = {"net.0.weight": torch.zeros(3, 6), "net.0.bias": torch.zeros(3)}
    run = _truck_run_with_policy(tmp_path, bad)
    before = (run.path / "metrics.json").read_text()
    code, err = run_main(["truck", "evaluate", "--run", str(run.path), "--episodes", "5"], capsys)
    line = error_line(err)
    assert code != 0 and "policy_emulator.pt" in line and "does not match" in line
    assert (run.path / "metrics.json").read_text() == before


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    run = _truck_run_with_policy(tmp_path, {})
    path = run.checkpoints / "policy_emulator.pt"
    path.write_bytes(path.read_bytes()[:40])
    code, err = run_main(["truck", "evaluate", "--run", str(run.path)], capsys)
    line = error_line(err)
    assert code != 0 and "policy_emulator.pt" in line and "corrupt" in line


def test_data_set_of_another_task_is_refused(tmp_path, capsys):
    from worldplan.worldmodels.dataset import write_dataset

    run = Run.create(tmp_path / "r", "truck")
    episodes = [{"states": np.zeros((5, 4), np.float32), "actions": np.zeros((4, 1), np.float32)}
                for _ in range(10)]
    write_dataset(run.data, episodes, task="highway", dt=0.1)
    code, err = run_main(["truck", "train-model", "--run", str(run.path)], capsys)
    assert code != 0 and "made for task 'highway'" in error_line(err)


def _raise_wrapped_interrupt(argv):
    # what Ctrl-C inside a lazy import looks like (torch imports torch._dynamo mid-training)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc


def test_an_interrupt_wrapped_by_another_error_is_an_interrupt(monkeypatch, capsys):
    monkeypatch.setattr("worldplan.experiments.cli.run_cli", _raise_wrapped_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        main(["truck", "all"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "worldplan: interrupted; run the same command again to continue"]


def test_a_bug_shows_its_traceback(monkeypatch):
    def bug(argv):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr("worldplan.experiments.cli.run_cli", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["truck", "all"])


@pytest.mark.parametrize("bug", [
    ValueError("matmul: size 4 is different from 3"),  # the error a shape bug raises
    KeyError("missing"),
    FileNotFoundError(2, "No such file or directory", "/nonexistent/package/asset.bin"),
])
def test_an_error_inside_a_stage_that_is_not_bad_input_shows_its_traceback(
        bug, tmp_path, monkeypatch, capsys):
    """Only a UserError is reported in one line: a ValueError from deep inside a stage is
    a bug, and so is a missing file outside the run folder."""
    def stage(config, run):
        raise bug

    monkeypatch.setitem(load_task("filters").stages, "evaluate", stage)
    with pytest.raises(type(bug)):
        main(["filters", "evaluate", "--preset", "quick", "--run", str(tmp_path / "r")])
    assert "worldplan: error" not in capsys.readouterr().err


@pytest.mark.parametrize("raised, message", [
    (UserError("data set d was made for task 'x'"), "made for task 'x'"),
    (None, "No such file or directory"),  # an input missing from the run folder
    (PermissionError(13, "Permission denied", "/elsewhere/out.png"), "Permission denied"),
])
def test_bad_input_inside_a_stage_is_one_line(raised, message, tmp_path, monkeypatch,
                                              capsys):
    def stage(config, run):
        if raised is None:
            open(run.path / "data" / "missing.npz", "rb")
        raise raised

    monkeypatch.setitem(load_task("filters").stages, "evaluate", stage)
    code, err = run_main(["filters", "evaluate", "--preset", "quick", "--run",
                          str(tmp_path / "r")], capsys)
    assert code == 2 and message in error_line(err)


def test_a_bad_value_in_the_config_checks_is_one_line(tmp_path, capsys):
    """The checks before any stage judge the input: the plain ValueError of a task's
    ``validate`` is bad input, and no run folder is left behind."""
    code, err = run_main(["filters", "evaluate", "--run", str(tmp_path / "r"),
                          "--process-noise", "-1"], capsys)
    assert code == 2 and "process_noise must be positive" in error_line(err)
    assert not (tmp_path / "r").exists()


def test_a_reader_that_goes_away_is_not_an_error(tmp_path) -> None:
    """``worldplan truck all --help | head -1``: stdout closes early; the command stops
    quietly (no traceback, no error line)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "worldplan", "truck", "all", "--help"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # no reader: every write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "worldplan: error" not in err, err
