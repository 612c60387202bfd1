"""README tables come from a run's metrics.json through a script, not by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worldplan.experiments.readme_tables import main, replace_block, truck_table

ROOT = Path(__file__).resolve().parents[1]


def _metrics() -> dict:
    row = {"success_rate": 0.999, "strict_success_rate": 0.989, "final_position_error": 0.0721,
           "final_angle_error_deg": 0.9234, "steps_to_dock": 52.44, "jackknife_rate": 0.0,
           "episodes": 1000}
    return {"evaluate": {"bptt_emulator": row, "lqr": {**row, "success_rate": 0.464},
                         "mpc_gradient": {**row, "episodes": 200}, "_setup": {"seed": 0}},
            "stages": {"collect": {"seconds": 2.4, "cpu_seconds": 2.0, "loadavg": [1.9]},
                       "evaluate": {"seconds": 61.0, "cpu_seconds": 58.6, "loadavg": [2.1]}}}


def test_truck_table_is_built_from_the_metrics():
    table = truck_table(_metrics())
    lines = table.splitlines()
    assert lines[2] == ("| BPTT through the emulator | 99.9% | 98.9% | 0.0721 | 0.923 deg | 52.4 "
                        "| 0.0% |")
    assert lines[3].startswith("| LQR about straight backing | 46.4% |")
    assert "gradient MPC through the emulator (pre-stabilised by the cascade) (first 200 starts)" \
        in lines[4]
    assert "collect 2 s, evaluate 61 s (wall time, load average 1.9-2.1); 61 s of CPU" in table


def test_the_docs_block_is_regenerated_in_place(tmp_path):
    readme = tmp_path / "truck.md"
    readme.write_text((ROOT / "docs" / "truck.md").read_text())
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_metrics()))
    main(["truck", "--run", str(run), "--readme", str(readme)])
    text = readme.read_text()
    assert truck_table(_metrics()) in text
    main(["truck", "--run", str(run), "--readme", str(readme)])
    assert readme.read_text() == text  # idempotent
    with pytest.raises(ValueError, match="no <!-- nope:begin -->"):
        replace_block(text, "nope", "x")
