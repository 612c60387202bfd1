"""Runs a user can trust: records, checks before work, errors, readable results."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from worldplan.experiments.cli import main
from worldplan.experiments.runs import Run


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("worldplan: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


NAV = ["--preset", "quick", "--episodes", "2", "--n-particles", "50", "--figure-episodes", "1"]


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory) -> Path:
    """A finished navigation run (evaluation only: 2 maps)."""
    path = tmp_path_factory.mktemp("nav") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["navigation", "evaluate", "--run", str(path), *NAV])
    assert exit_info.value.code == 0
    return path


# -- 2. an evaluation with other settings keeps the run's record ---------------------------
def test_evaluation_with_another_seed_writes_its_own_record(nav_run, tmp_path, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(nav_run, run)
    config_before = (run / "config.yaml").read_bytes()
    metrics_before = json.loads((run / "metrics.json").read_text())
    figures_before = snapshot(run / "figures")
    code, out, _err = run_main(["navigation", "evaluate", "--run", str(run), "--seed", "424242"],
                               capsys)
    assert code == 0
    assert (run / "config.yaml").read_bytes() == config_before
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluate"] == metrics_before["evaluate"]
    record = metrics["evaluate-seed424242"]
    assert record["_settings"] == {"seed": 424242} and record["episodes"] == 2
    assert set(snapshot(run / "figures")) >= set(figures_before)
    for name, data in figures_before.items():
        assert (run / "figures" / name).read_bytes() == data
    assert (run / "figures" / "evaluate-seed424242" / "maps_paths.png").is_file()
    assert "evaluate-seed424242" in out  # the summary table names the record
    # the same evaluation again rewrites its own record, not the original one
    code, _out, _err = run_main(["navigation", "evaluate", "--run", str(run), "--seed",
                                 "424242"], capsys)
    assert code == 0 and json.loads((run / "metrics.json").read_text())["evaluate"] == \
        metrics_before["evaluate"]


def test_a_making_stage_refuses_to_continue_a_run_with_other_settings(tmp_path, capsys,
                                                                      caplog):
    run = tmp_path / "r"
    code, _o, _e = run_main(["truck", "collect", "--preset", "quick", "--run", str(run),
                             "--collect.episodes", "30", "--collect.max-steps", "10"], capsys)
    assert code == 0
    before = snapshot(run)
    code, _o, err = run_main(["truck", "train-model", "--run", str(run), "--seed", "5"], capsys)
    line = error_line(err)
    assert code == 2 and "made its collect stage with seed = 0; train-model cannot change it " \
        "to 5" in line and "new --run" in line
    assert snapshot(run) == before
    # a completed stage is skipped, and says so
    caplog.set_level("INFO")
    code, _o, err = run_main(["truck", "collect", "--run", str(run)], capsys)
    assert code == 0 and "collect: complete" in caplog.text
    assert snapshot(run)["data/manifest.json"] == before["data/manifest.json"]


# -- 3. an artefact that cannot be made does not cost the result ----------------------------
def test_missing_renderer_still_leaves_metrics(tmp_path, capsys, monkeypatch, caplog):
    import worldplan.experiments.mujoco as mujoco

    real = mujoco.make_env

    def no_renderer(env_id, render_mode=None, **kw):
        if render_mode is not None:
            raise gym.error.DependencyNotInstalled("pygame is not installed")
        return real(env_id, **kw)

    monkeypatch.setattr(mujoco, "make_env", no_renderer)
    run = tmp_path / "r"
    code, _o, err = run_main(["mujoco", "evaluate", "--env", "Pendulum-v1", "--planner", "mppi",
                              "--model", "true", "--episodes", "2", "--max-steps", "5",
                              "--mpc.samples", "20", "--mpc.horizon", "5", "--video", "--run",
                              str(run)], capsys)
    assert code == 0, err
    assert "could not write the video" in caplog.text and "pygame" in caplog.text
    metrics = json.loads((run / "metrics.json").read_text())["evaluate"]
    assert np.isfinite(metrics["mean_return"]) and len(metrics["returns"]) == 2


# -- 4. the whole configuration is checked before any file is written -----------------------
@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"),
                                             ("tpu", "device 'tpu'"),
                                             ("cuda:9", "")])
def test_bad_device_fails_before_any_file(tmp_path, capsys, device, message):
    import torch

    if torch.cuda.is_available() and device != "tpu":
        pytest.skip("this machine has CUDA")
    run = tmp_path / "new" / "run"
    code, _o, err = run_main(["truck", "all", "--preset", "quick", "--device", device, "--run",
                              str(run)], capsys)
    assert code == 2 and message in error_line(err)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, message", [
    (["--collect.episodes", "-5"], "collect.episodes must be >= 0"),
    (["--emulator.lr", "0"], "emulator.lr must be positive"),
    (["--emulator.lr", "nan"], "emulator.lr must be finite"),
    (["--episodes", "0"], "episodes must be >= 1"),
    (["--collect.rear-x", "50", "10"], "low <= high"),
    (["--emulator.dropout", "1.5"], "emulator.dropout must be in [0, 1)"),
    (["--seed", "-1"], "seed must be >= 0"),
])
def test_value_ranges_are_checked_before_work(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    code, _o, err = run_main(["truck", "all", "--preset", "quick", "--run", str(run), *args],
                             capsys)
    assert code == 2 and message in error_line(err)
    assert not run.exists()


# -- 5. non-finite actions and stepping after the end, in every registered environment ------
def _small_env(env_id: str):
    from worldplan.envs.truck import TruckParams

    kwargs = {"worldplan/TruckBackerUpper-v0": {"params": TruckParams(max_steps=1)},
              "worldplan/DenseTraffic-v0": {"max_steps": 1, "warmup": 5},
              "worldplan/Navigation2D-v0": {"max_steps": 1}}[env_id]
    return gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", sorted(__import__("envs").ENVIRONMENTS))
def test_every_env_rejects_nan_actions_and_steps_after_the_end(env_id):
    env = _small_env(env_id)
    env.reset(seed=0)
    size = env.action_space.shape[0]
    for bad in ([np.nan] * size, [np.inf] * size, [0.0] * (size + 1)):
        with pytest.raises(ValueError, match="finite"):
            env.step(np.array(bad, np.float32))
    _obs, _r, terminated, truncated, _info = env.step(np.zeros(size, np.float32))
    assert terminated or truncated  # one-step episodes
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(size, np.float32))
    env.reset(seed=1)
    env.step(np.zeros(size, np.float32))  # a reset starts a new episode
    env.close()


# -- 6-9. errors a user can act on --------------------------------------------------------
def test_wrongly_typed_config_field_is_named(nav_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(nav_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["seed"] = "zero"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _o, err = run_main(["navigation", "evaluate", "--run", str(run)], capsys)
    line = error_line(err)
    assert code == 2 and "config.yaml: seed must be an integer, got 'zero'" in line


def test_unwritable_run_folder_is_one_line(tmp_path, capsys):
    code, _o, err = run_main(["navigation", "evaluate", "--run", "/proc/worldplan-run", *NAV],
                             capsys)
    assert code == 2 and "/proc" in error_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _o, err = run_main(["navigation", "evaluate", "--run", str(blocker / "run"), *NAV],
                             capsys)
    assert code == 2 and "is not a folder" in error_line(err)


def test_failing_command_leaves_no_run_folder_and_names_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, _o, err = run_main(["truck", "evaluate"], capsys)
        line = error_line(err)
        assert code == 2 and "--run runs/truck/" in line
    assert not (tmp_path / "runs").exists()
    code, _o, err = run_main(["truck", "evaluate", "--run", "a/b/c"], capsys)
    assert code == 2 and "--run a/b/c" in error_line(err)
    assert not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    code, _o, err = run_main(["truck", "evaluate", "--run", "empty"], capsys)
    assert code == 2 and list((tmp_path / "empty").iterdir()) == []


def test_corrupt_metrics_is_found_before_the_work(nav_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(nav_run, run)
    (run / "metrics.json").write_text('{"evaluate": {')
    before = snapshot(run)
    t0 = time.perf_counter()
    code, _o, err = run_main(["navigation", "evaluate", "--run", str(run)], capsys)
    line = error_line(err)
    assert code == 2 and "metrics.json is corrupt" in line and "mv " in line
    assert time.perf_counter() - t0 < 5 and snapshot(run) == before


def test_field_errors_point_at_the_help_that_lists_fields(tmp_path, capsys):
    code, _o, err = run_main(["truck", "collect", "--emulator.epochs", "abc"], capsys)
    line = error_line(err)
    assert code == 2 and "--emulator.epochs: expected int" in line
    assert "`worldplan truck all --help`" in line
    code, out, _e = run_main(["truck", "all", "--help"], capsys)
    assert code == 0 and "--emulator.epochs" in out
    stage_lines = [ln for ln in out.split("\ncommon options:")[0].splitlines()
                   if ln.split()[:1] and ln.split()[0] in ("collect", "train-model",
                                                           "train-policy", "evaluate")]
    assert [ln.split()[0] for ln in stage_lines] == ["collect", "train-model", "train-policy",
                                                     "evaluate"]
    code, out, _e = run_main(["highway", "--help"], capsys)  # stages from their docstrings
    head = out.split("\ncommon options:")[0].splitlines()
    assert code == 0 and [ln.split()[0] for ln in head if ln.split()[:1] and ln.split()[0] in
                          ("collect", "train-model", "train-policy", "evaluate")] == \
        ["collect", "train-model", "train-policy", "evaluate"]


# -- 10. one summary table, printed again by `show` -----------------------------------------
def test_show_prints_and_compares_runs(nav_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(nav_run, other)
    m = json.loads((other / "metrics.json").read_text())
    m["evaluate"]["success_rate"] = 0.25
    (other / "metrics.json").write_text(json.dumps(m))
    code, out, _e = run_main(["navigation", "show", "--run", str(nav_run)], capsys)
    assert code == 0
    header, _rule, row = out.splitlines()[:3]
    assert header.split()[:3] == ["record", "method", "success"]
    rate = json.loads((nav_run / "metrics.json").read_text())["evaluate"]["success_rate"]
    assert f"{100 * rate:.1f}%" in row and "astar" in row
    code, out, _e = run_main(["navigation", "show", "--run", str(nav_run), "--run", str(other)],
                             capsys)
    rows = out.splitlines()
    assert code == 0 and " A " in rows[2] and " B " in rows[3] and "25.0%" in rows[3]
    assert rows[-1] == f"run B: {other}"


def test_summary_table_of_every_task_layout():
    from worldplan.experiments.summary import format_table, summary_rows

    metrics = {
        "evaluate": {"lqr": {"success_rate": 0.5, "final_position_error": 1.23456,
                             "episodes": 20}, "_setup": {"episodes": 20}},
        "evaluate-seed7": {"lqr": {"success_rate": 0.25, "episodes": 20}},
        "pendulum": {"ukf": {"angle_rmse": 0.0123456}},
        "stages": {"evaluate": {"seconds": 12.0, "cpu_seconds": 6.0}},
    }
    rows = summary_rows(metrics)
    assert [(r["record"], r["method"]) for r in rows] == [
        ("evaluate", "lqr"), ("evaluate-seed7", "lqr"), ("pendulum", "ukf")]
    table = format_table([("r", rows)])
    assert "50.0%" in table and "1.23" in table and "0.0123" in table and "12 s (6 s)" in table
    assert "1.23456" not in table


# -- 11. figures readable on their own -----------------------------------------------------
def test_truck_figures_are_readable_and_the_checker_can_fail(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from worldplan.envs.truck import TruckParams
    from worldplan.experiments import common
    from worldplan.experiments import truck_figures as figures
    from worldplan.experiments.truck_baselines import LQRController

    seen: list[tuple[str, list[str]]] = []
    real = common.save_figure

    def checked(fig, path):
        seen.append((Path(path).name, common.figure_problems(fig)))
        return real(fig, path)

    monkeypatch.setattr(figures, "save_figure", checked)
    metrics = {name: {"success_rate": 0.99, "strict_success_rate": 0.98, "episodes": 100}
               for name in ("bptt_emulator", "bptt_truth", "gradient_mpc", "lqr", "cascade")}
    figures.success_bars(metrics, tmp_path / "bars.png")
    p = TruckParams()
    figures.trajectory_grid(LQRController(p), p, tmp_path / "grid.png")
    assert [name for name, _ in seen] == ["bars.png", "grid.png"]
    assert all(not problems for _name, problems in seen), seen
    # the checker finds what made the old figures unreadable
    fig, ax = plt.subplots()
    ax.bar([0, 1], [100, 100], label="a")
    ax.bar([0.4, 1.4], [100, 100], label="b")
    ax.legend(loc="lower right")
    problems = common.figure_problems(fig)
    plt.close(fig)
    assert any("no title" in p for p in problems) and any("covers a bar" in p for p in problems)


# -- 12. videos play in a browser: H.264 ---------------------------------------------------
def test_videos_are_h264_and_decode(tmp_path):
    from worldplan.envs.truck import TruckParams
    from worldplan.experiments import truck_figures as figures
    from worldplan.experiments.truck_baselines import LQRController
    from worldplan.experiments.video import video_codec

    p = TruckParams()
    starts = figures.grid_starts(p)[:1]
    path = figures.docking_video(LQRController(p), p, starts, tmp_path / "d.mp4")
    assert video_codec(path) == "h264"


# -- 13. one TensorBoard tag per quantity ---------------------------------------------------
def test_writer_keeps_one_tag_per_quantity():
    from worldplan.experiments.runs import _OneTagWriter

    class Fake:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    fake = Fake()
    w = _OneTagWriter(fake)
    w.add_scalar("emulator/train_step_loss", 0.5, 1)
    w.add_scalar("emulator/mse", 0.5, 1)  # the same series: dropped
    w.add_scalar("model/train_step_loss", 0.7, 1)
    w.add_scalar("model/mse", 0.4, 1)  # a different quantity (loss = mse + kl): kept
    assert [c[0] for c in fake.calls] == ["emulator/train_step_loss", "model/train_step_loss",
                                          "model/mse"]


# -- 14. progress in a log file: a line every few seconds ----------------------------------
def test_progress_in_a_non_tty_logs_plain_lines_every_interval():
    from tqdm.auto import tqdm

    from worldplan.experiments.common import configure_progress, restore_progress

    buf = io.StringIO()
    assert configure_progress(buf, interval=0.25, force=True)
    try:
        bar = tqdm(total=40, desc="work")
        for _ in range(40):
            time.sleep(0.02)
            bar.set_postfix(loss=1.0)  # refreshes on every call
            bar.update(1)
        bar.close()
    finally:
        restore_progress()
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and 2 <= len(lines) <= 8, lines
    assert "40/40" in lines[-1]


# -- 15-16. shareable run folders ----------------------------------------------------------
def test_run_files_respect_the_umask_and_paths_are_relative(tmp_path):
    old = os.umask(0o022)
    try:
        run = Run.create(tmp_path / "r", "truck")
        run.update_metrics("evaluate", {"video": run.videos / "v.mp4",
                                        "abs": str((run.path / "figures" / "x.png").resolve()),
                                        "outside": "/etc/hosts"})
        folder = Path(tempfile.mkdtemp(dir=run.path))  # as libraries make them: 0700
        (folder / "f").write_text("x")
        os.chmod(folder / "f", 0o600)
        run.normalise_permissions()
    finally:
        os.umask(old)
    for path in (run.path / "run.json", run.metrics_path, folder / "f"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    saved = json.loads(run.metrics_path.read_text())["evaluate"]
    assert saved == {"video": "videos/v.mp4", "abs": "figures/x.png", "outside": "/etc/hosts"}


def test_log_lines_shorten_floats_in_dicts():
    import logging

    from worldplan.experiments.common import BriefNumbers

    record = logging.LogRecord("x", logging.INFO, "f", 1, "traffic: %s (%.2f)",
                               ({"speed": 6.123456789012345, "lanes": [0.1234567891234]},
                                3.14159), None)
    BriefNumbers().filter(record)
    assert record.getMessage() == "traffic: {'speed': 6.123, 'lanes': [0.1235]} (3.14)"


def test_boolean_and_tuple_overrides():
    from worldplan.experiments.config import parse_overrides
    from worldplan.experiments.truck import TruckConfig

    cfg = parse_overrides(TruckConfig(), ["--mpc.no-enabled", "--no-progress",
                                          "--policy.hidden", "32", "16",
                                          "--collect.rear-y", "-10", "10",
                                          "--policy.train-truth=false", "--dt", "0.5"], "hint")
    assert (cfg.mpc.enabled, cfg.progress, cfg.policy.train_truth) == (False, False, False)
    assert cfg.policy.hidden == (32, 16) and cfg.collect.rear_y == (-10.0, 10.0)
    assert cfg.dt == 0.5


def test_record_names_are_short_and_safe():
    from worldplan.experiments.config import record_name

    assert record_name({"seed": (0, 424242)}) == "seed424242"
    assert record_name({"episodes": (0, 20), "evaluate.methods": (["a"], ["no-action", "mpur"])}) \
        == "episodes20-evaluate.methods_no_action_mpur"
    assert record_name({"planner": ("cem", "mppi"), "mpc.enabled": (True, False)}) == \
        "mpc.enabled_False-planner_mppi"
    long = record_name({f"field{i}": (0, "x" * 20) for i in range(5)})
    assert long.startswith("settings") and len(long) == 16
