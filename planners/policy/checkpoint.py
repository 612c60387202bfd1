"""One checkpoint format for every learned policy.

A policy checkpoint is plain data, never a pickled module::

    {"kind": "policy", "task": "truck", "class": "MLPPolicy", "config": {...},
     "state_dict": {...}, "meta": {...}}

``config`` is what the policy reports about itself (``policy.config``, a dict or a method
returning one); ``meta`` holds what the task wants to keep beside the weights (the training
source, method, seed, history, normalisation statistics). The task rebuilds the network
from ``config`` (it alone knows the callables a policy needs, such as input features), and
:func:`load_policy` checks that the weights fit it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from worldplan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    save_checkpoint,
)

POLICY_KIND = "policy"


def policy_config(policy: nn.Module) -> dict[str, Any]:
    """The policy's own description of itself, as plain data."""
    config = getattr(policy, "config", None)
    if callable(config):
        config = config()
    if not isinstance(config, dict):
        raise TypeError(f"{type(policy).__name__} must describe itself with a `config` dict "
                        "(or a method returning one) to be saved")
    return dict(config)


def save_policy(path: str | os.PathLike, policy: nn.Module, task: str,
                meta: dict[str, Any] | None = None) -> Path:
    """Save ``policy`` of ``task`` atomically (see the module doc)."""
    return save_checkpoint(path, {
        "kind": POLICY_KIND, "task": task, "class": type(policy).__name__,
        "config": policy_config(policy),
        "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "meta": dict(meta or {})})


def read_policy(path: str | os.PathLike, task: str) -> dict[str, Any]:
    """The checked payload of a policy checkpoint of ``task`` (without building it); a
    task's own older format (kind ``"<task>-policy"``) is named as such."""
    payload = load_checkpoint(path)
    kind = payload.get("kind")
    if kind != POLICY_KIND:
        if isinstance(kind, str) and kind.endswith("-policy"):
            raise CheckpointError(f"{path} holds a policy in an older format (kind {kind!r}); "
                                  "train it again")
        raise CheckpointError(f"checkpoint {path} holds a {kind!r}, expected {POLICY_KIND!r}")
    missing = [k for k in ("task", "class", "config", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if payload["task"] != task:
        raise CheckpointError(f"{path} holds a policy for {payload['task']!r}, not {task!r}")
    return payload


def differences(found: dict[str, Any], expected: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Entries of ``expected`` whose value in ``found`` differs: key -> (found, expected);
    tuples and lists compare equal when their items do (a config read back from a
    checkpoint holds lists)."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {k: (found.get(k), v) for k, v in expected.items() if plain(found.get(k)) != plain(v)}


def check_policy(payload: dict[str, Any], path: str | os.PathLike,
                 config: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """One :class:`CheckpointError` naming every entry of the policy's ``config`` (and of
    its ``meta``) that differs from what the caller expects, e.g. a context length or a
    world-model mode the current configuration does not use."""
    diff = differences(payload["config"], config)
    diff.update(differences(payload.get("meta", {}), meta or {}))
    if diff:
        what = ", ".join(f"{k} {a!r} (expected {b!r})" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"policy {path} was trained with another configuration: {what}; "
                              "train it again or use the settings it was trained with")


def load_policy(path: str | os.PathLike, task: str,
                build: Callable[[dict[str, Any], dict[str, Any]], nn.Module]
                ) -> tuple[nn.Module, dict[str, Any]]:
    """``(policy in eval mode, meta)``: ``build(config, meta)`` makes the network, whose
    weights must then match the checkpoint's (one :class:`CheckpointError` if not)."""
    payload = read_policy(path, task)
    policy = build(payload["config"], payload["meta"])
    if type(policy).__name__ != payload["class"]:
        raise CheckpointError(f"{path} holds a {payload['class']}, the task built a "
                              f"{type(policy).__name__}")
    load_state_dict_checked(policy, payload["state_dict"], str(path))
    return policy.eval(), payload["meta"]
