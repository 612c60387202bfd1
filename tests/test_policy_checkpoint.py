"""planners/policy/checkpoint.py: one policy checkpoint format, checked on load."""

from __future__ import annotations

import pytest
import torch

from worldplan.checkpoint import CheckpointError, save_checkpoint
from worldplan.planners.policy.bptt import MLPPolicy
from worldplan.planners.policy.checkpoint import (
    check_policy,
    load_policy,
    read_policy,
    save_policy,
)


def _policy(hidden=(8, 8)) -> MLPPolicy:
    torch.manual_seed(0)
    return MLPPolicy(3, 1, torch.tensor([-1.0]), torch.tensor([1.0]), hidden)


def _build(config, meta):
    return MLPPolicy(config["in_dim"], config["action_dim"], torch.tensor([-1.0]),
                     torch.tensor([1.0]), config["hidden"])


def test_round_trip_keeps_weights_config_and_meta(tmp_path) -> None:
    policy = _policy()
    path = save_policy(tmp_path / "p.pt", policy, "truck", {"seed": 3, "history": [1.0]})
    loaded, meta = load_policy(path, "truck", _build)
    x = torch.randn(5, 3)
    torch.testing.assert_close(loaded(x), policy(x))
    assert meta == {"seed": 3, "history": [1.0]} and not loaded.training
    assert read_policy(path, "truck")["config"] == {"in_dim": 3, "action_dim": 1,
                                                    "hidden": [8, 8]}


def test_wrong_task_class_or_shape_is_one_clear_error(tmp_path) -> None:
    path = save_policy(tmp_path / "p.pt", _policy(), "truck")
    with pytest.raises(CheckpointError, match="holds a policy for 'truck', not 'highway'"):
        load_policy(path, "highway", _build)
    with pytest.raises(CheckpointError, match="holds a MLPPolicy, the task built a Linear"):
        load_policy(path, "truck", lambda c, m: torch.nn.Linear(3, 1))
    with pytest.raises(CheckpointError, match="does not match MLPPolicy"):
        load_policy(path, "truck", lambda c, m: _policy(hidden=(4,)))
    save_checkpoint(tmp_path / "model.pt", {"kind": "DeterministicModel", "config": {}})
    with pytest.raises(CheckpointError, match="expected 'policy'"):
        read_policy(tmp_path / "model.pt", "truck")


def test_a_policy_without_a_config_cannot_be_saved(tmp_path) -> None:
    with pytest.raises(TypeError, match="describe itself with a `config`"):
        save_policy(tmp_path / "p.pt", torch.nn.Linear(2, 1), "truck")
    assert not (tmp_path / "p.pt").exists()


def test_an_older_task_format_and_another_configuration_are_named(tmp_path) -> None:
    save_checkpoint(tmp_path / "old.pt", {"kind": "truck-policy", "state_dict": {}})
    with pytest.raises(CheckpointError, match=r"older format \(kind 'truck-policy'\)"):
        read_policy(tmp_path / "old.pt", "truck")
    path = save_policy(tmp_path / "p.pt", _policy(), "truck", {"source": "emulator"})
    payload = read_policy(path, "truck")
    check_policy(payload, path, {"in_dim": 3, "hidden": (8, 8)}, {"source": "emulator"})
    with pytest.raises(CheckpointError, match=r"hidden \[8, 8\] \(expected \[4\]\), "
                                              r"source 'emulator' \(expected 'truth'\)"):
        check_policy(payload, path, {"hidden": [4]}, {"source": "truth"})
