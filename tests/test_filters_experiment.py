"""The filters task: pendulum ordering (UKF, PF < EKF < linearised KF) and localisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worldplan.experiments.filters import (
    TASK,
    FiltersConfig,
    localisation_demo,
    pendulum_comparison,
    quick_config,
)
from worldplan.experiments.runs import Run


def test_pendulum_ukf_and_pf_beat_ekf_which_beats_linear_kf() -> None:
    config = quick_config()
    metrics, arrays = pendulum_comparison(config, np.random.default_rng(config.seed),
                                          torch.device("cpu"))
    rmse = {name: vals["angle_rmse"] for name, vals in metrics.items()}
    assert rmse["UKF"] < rmse["EKF"], rmse
    assert rmse["PF"] < rmse["EKF"], rmse
    assert rmse["EKF"] < rmse["KF (linearised)"], rmse
    assert arrays["PF"].shape == (config.episodes, config.pendulum_steps, 2)


def test_localisation_converges_from_a_uniform_prior() -> None:
    config = FiltersConfig(loc_particles=5000, loc_steps=30)
    metrics, arrays = localisation_demo(config, np.random.default_rng(0), torch.device("cpu"))
    assert metrics["final_position_error_m"] < 0.6
    assert metrics["final_heading_error_rad"] < 0.2
    assert metrics["converged_step"] is not None
    assert arrays["particles"].shape == (30, 5000, 3)
    # the cloud shrinks from the whole room to well under a metre
    spread0 = arrays["particles"][0, :, :2].std(0).max()
    assert spread0 > 4.0 and metrics["final_particle_spread_m"] < 1.0


@pytest.mark.slow
def test_evaluate_stage_writes_metrics_and_figures(tmp_path) -> None:
    run = Run.create(tmp_path / "run", "filters")
    TASK.stages["evaluate"](quick_config(), run)
    metrics = json.loads(run.metrics_path.read_text())
    assert set(metrics) >= {"pendulum", "localisation"}
    assert (run.figures / "pendulum.png").stat().st_size > 10_000
    assert (run.figures / "localisation.png").stat().st_size > 10_000
    run.close()


def test_bad_config_is_named() -> None:
    run_config = quick_config()
    run_config.loc_particles = 1
    with pytest.raises(ValueError, match="loc_particles"):
        TASK.stages["evaluate"](run_config, None)  # type: ignore[arg-type]


def test_bad_noise_config_is_named() -> None:
    config = quick_config()
    config.measurement_noise = -1.0
    with pytest.raises(ValueError, match="measurement_noise must be positive"):
        TASK.stages["evaluate"](config, None)  # type: ignore[arg-type]
