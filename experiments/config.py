"""Configs are dataclasses: printed and saved whole as YAML, rebuilt from YAML on resume."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from worldplan.worldmodels.checkpoint import atomic_write_text

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_yaml(config: Any, path: Path) -> None:
    atomic_write_text(path, to_yaml(config))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Rebuild a (nested) dataclass from plain data, naming any unknown or bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def load_yaml(cls: type[T], path: Path) -> T:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from None
    return from_dict(cls, data, where=str(path))
