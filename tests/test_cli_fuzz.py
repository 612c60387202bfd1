"""A fuzz test of the ``worldplan`` command: generated bad invocations (unknown names, bad
types and ranges, missing, unreadable and foreign folders, corrupt files of every kind a run
folder holds). Each must end with exit code 0 or 2, one ``worldplan: error:`` line and no
traceback, and leave every file that was in the run folder byte-identical."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from worldplan.experiments.cli import main

# Bad command lines: (task, stage, extra arguments); each also gets a fresh --run.
NAMES = [("nope", "all", []), ("Truck", "evaluate", []), ("truck", "fly", []),
         ("truck", "collect", ["--preset", "huge"]), ("navigation", "train-model", []),
         ("filters", "collect", []), ("truck", "evaluat", [])]
TRUCK_VALUES = [["--seed", "abc"], ["--seed", "1.5"], ["--seed", "-2"], ["--episodes", "x"],
                ["--episodes", "0"], ["--device", "tpu"], ["--device", "cuda"],
                ["--device", "cuda:7"], ["--device", ""], ["--nope", "3"],
                ["--collect.nope", "3"], ["--collect.episodes"], ["--collect.episodes", "1", "2"],
                ["--collect.rear-x", "1"], ["--collect.rear-x", "9", "1"],
                ["--policy.hidden", "a"], ["--progress", "maybe"], ["--no-seed"],
                ["positional"], ["--emulator.lr", "-1"], ["--emulator.lr", "inf"], ["--dt", "0"],
                ["--collect.episodes", "-3"], ["--emulator.dropout", "1"],
                ["--mpc.enabled", "2"], ["--preset"]]
OTHER_TASKS = [("highway", "collect", ["--policy.methods", "nope"]),
               ("highway", "evaluate", ["--evaluate.methods", "fly"]),
               ("highway", "collect", ["--model.z-dim", "0"]),
               ("highway", "collect", ["--policy.seeds", "1", "1"]),
               ("mujoco", "evaluate", ["--env", "Nope-v0"]),
               ("mujoco", "evaluate", ["--planner", "x"]),
               ("mujoco", "evaluate", ["--model", "true", "--env", "HalfCheetah-v5"]),
               ("mujoco", "evaluate", ["--episodes", "0"]),
               ("navigation", "evaluate", ["--planner", "dijkstra"]),
               ("navigation", "evaluate", ["--speed", "0"]),
               ("filters", "evaluate", ["--dt", "0"]),
               ("filters", "evaluate", ["--episodes", "1"])]
COMMAND_LINES = (NAMES + [("truck", s, v) for s, v in
                          zip(itertools.cycle(["collect", "all", "evaluate"]), TRUCK_VALUES)]
                 + OTHER_TASKS)

# Corruptions of a truck run after `collect`: (file, new content, command).
CORRUPT = [
    ("run.json", b"{not json", "evaluate"), ("run.json", b"[]", "evaluate"),
    ("run.json", b'{"task": 3}', "evaluate"), ("run.json", b"", "train-model"),
    ("config.yaml", b"seed: [", "train-model"), ("config.yaml", b"seed: zero\n", "evaluate"),
    ("config.yaml", b"nope: 1\n", "evaluate"), ("config.yaml", b"- 1\n- 2\n", "evaluate"),
    ("config.yaml", b"collect: 3\n", "train-model"), ("config.yaml", b"dt: -1\n", "evaluate"),
    ("metrics.json", b'{"collect": {', "train-model"), ("metrics.json", b"[1, 2]", "evaluate"),
    ("metrics.json", b"", "all"), ("stages/collect.done.json", b"{x", "all"),
    ("stages/collect.done.json", b"7", "train-model"),
    ("data/manifest.json", b"{broken", "train-model"),
    ("data/manifest.json", b'{"task": "truck"}', "train-model"),
    ("checkpoints/emulator/best.pt", b"\x80\x02garbage", "train-policy"),
    ("checkpoints/emulator/best.pt", b"", "evaluate"),
    ("checkpoints/policy_emulator.pt", b"PK\x03\x04torn", "evaluate"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def check(args: list[str], capsys) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    code = exit_info.value.code
    assert code in (0, 2), (args, code, err)
    assert "Traceback" not in err, (args, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("worldplan: error:")]
    assert len(errors) == (1 if code == 2 else 0), (args, err)
    return code


@pytest.fixture(scope="module")
def truck_run(tmp_path_factory) -> Path:
    """A truck run after `collect`, plus the checkpoint files later stages leave."""
    from worldplan.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("fuzz") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["truck", "collect", "--preset", "quick", "--run", str(path),
              "--collect.episodes", "40", "--collect.max-steps", "12"])
    assert exit_info.value.code == 0
    for name in ("emulator/best.pt", "policy_emulator.pt"):
        save_checkpoint(path / "checkpoints" / name, {"kind": "placeholder"})
    return path


def test_generated_command_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(COMMAND_LINES) >= 40
    for i, (task, stage, extra) in enumerate(COMMAND_LINES):
        run = tmp_path / f"new{i}" / "run"
        code = check([task, stage, *extra, "--run", str(run)], capsys)
        assert code == 2, (task, stage, extra)
        assert not (tmp_path / f"new{i}").exists(), (task, stage, extra)
    assert not (tmp_path / "runs").exists()


def test_folders_missing_unreadable_and_foreign(tmp_path, capsys, truck_run):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [["truck", "evaluate", "--run", str(foreign)],
             ["truck", "collect", "--run", str(a_file)],
             ["truck", "collect", "--run", str(a_file / "sub")],
             ["highway", "evaluate", "--run", str(truck_run)],
             ["truck", "evaluate", "--run", "/proc/worldplan-run"],
             ["truck", "evaluate", "--resume", str(tmp_path / "missing")],
             ["truck", "show", "--run", str(tmp_path / "missing")],
             ["truck", "show"],
             ["truck", "evaluate", "--run", str(truck_run), "--run", str(foreign)],
             ["truck", "train-model", "--run", str(tmp_path / "fresh" / "run")]]
    before = {p: snapshot(p) for p in (foreign, truck_run)}
    for args in cases:
        assert check(args, capsys) == 2, args
    assert {p: snapshot(p) for p in (foreign, truck_run)} == before
    assert a_file.read_text() == "x" and not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("case", range(len(CORRUPT)))
def test_corrupt_run_files(case, tmp_path, capsys, truck_run):
    name, content, stage = CORRUPT[case]
    run = tmp_path / "run"
    shutil.copytree(truck_run, run)
    (run / name).write_bytes(content)
    before = snapshot(run)
    assert check(["truck", stage, "--run", str(run)], capsys) == 2
    after = snapshot(run)
    assert {k: after.get(k) for k in before} == before


def test_corrupt_data_shard(tmp_path, capsys, truck_run):
    run = tmp_path / "run"
    shutil.copytree(truck_run, run)
    shard = sorted((run / "data").glob("*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:50])
    before = snapshot(run)
    assert check(["truck", "train-model", "--run", str(run)], capsys) == 2
    after = snapshot(run)
    assert {k: after.get(k) for k in before} == before


def test_the_generator_reaches_fifty_invocations():
    folder_cases = 10
    total = len(COMMAND_LINES) + folder_cases + len(CORRUPT) + 1
    assert total >= 50, total
    assert np.unique([json.dumps(c) for c in COMMAND_LINES]).size == len(COMMAND_LINES)
