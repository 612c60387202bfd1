"""Configs are dataclasses: printed and saved whole as YAML, rebuilt from YAML on resume,
overridden from the command line (``--group.field value``), and checked whole (types and
value ranges) before any stage does work."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from worldplan.checkpoint import atomic_write_text

T = TypeVar("T")

# Fields that say how a run is executed, not what it computes: they may differ between the
# commands of one run without making a new record (the device used is kept per stage).
RUNTIME_FIELDS = frozenset({"device", "progress", "threads"})


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(_plain(to_dict(config)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
        kwargs[name] = _coerce(hints[name], value, f"{where}: {name}" if ":" not in where
                               else f"{where}.{name}")
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (ints widen to floats, lists
    become tuples); a mismatch is a ``ValueError`` naming the field."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where} must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in
                     enumerate(zip(args, value, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    return value


def load_yaml(cls: type[T], path: Path) -> T:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path} is not valid YAML ({type(exc).__name__}); move it "
                         f"aside or fix it") from None
    return from_dict(cls, data, where=str(path))


# ------------------------------------------------------------------------- overrides
def fields_of(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a nested dataclass: dotted name -> annotation."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out.update(fields_of(hint, f"{name}."))
        else:
            out[name] = hint
    return out


_NUMBER = re.compile(r"^-\.?\d")


def _parse_scalar(hint: Any, text: str, name: str, help_hint: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        hint = args[0]
    try:
        if hint is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(text)
        if hint is float:
            value = float(text)
            return value
        return text
    except ValueError:
        raise ValueError(f"--{name}: expected {_type_name(hint)}, got {text!r} "
                         f"({help_hint})") from None


def parse_overrides(config: T, args: list[str], help_hint: str) -> T:
    """``config`` with ``--group.field value`` overrides applied (``-`` and ``_`` are the
    same in names; tuples take several values; booleans also take ``--flag`` and
    ``--no-flag``). Any unknown name or bad value is one ``ValueError``."""
    cls = type(config)
    known = fields_of(cls)
    data = to_dict(config)
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r} ({help_hint})")
        body = token[2:]
        inline = None
        if "=" in body:
            body, inline = body.split("=", 1)
        name = body.replace("-", "_")
        negate = False
        if name not in known and "." in name:
            head, _, leaf = name.rpartition(".")
            if leaf.startswith("no_") and f"{head}.{leaf[3:]}" in known:
                name, negate = f"{head}.{leaf[3:]}", True
        elif name not in known and name.startswith("no_") and name[3:] in known:
            name, negate = name[3:], True
        if name not in known:
            raise ValueError(f"unknown option --{body} for {cls.__name__} ({help_hint})")
        hint = known[name]
        values: list[str] = [] if inline is None else [inline]
        if inline is None:
            j = i + 1
            while j < len(args) and (not args[j].startswith("--") or _NUMBER.match(args[j])):
                values.append(args[j])
                j += 1
            i = j
        else:
            i += 1
        if negate or (hint is bool and not values):
            if hint is not bool or values:
                raise ValueError(f"--{body} takes no value ({help_hint})")
            value: Any = not negate
        elif typing.get_origin(hint) is tuple:
            elems = typing.get_args(hint)
            if not values:
                raise ValueError(f"--{body} needs values ({help_hint})")
            if len(elems) == 2 and elems[1] is Ellipsis:
                value = [_parse_scalar(elems[0], v, body, help_hint) for v in values]
            else:
                if len(values) != len(elems):
                    raise ValueError(f"--{body} takes {len(elems)} values, got {len(values)} "
                                     f"({help_hint})")
                value = [_parse_scalar(e, v, body, help_hint)
                         for e, v in zip(elems, values, strict=True)]
        else:
            if len(values) != 1:
                raise ValueError(f"--{body} takes one value, got {len(values)} ({help_hint})")
            value = _parse_scalar(hint, values[0], body, help_hint)
        node = data
        *groups, leaf = name.split(".")
        for g in groups:
            node = node[g]
        node[leaf] = value
    return from_dict(cls, data)


# ------------------------------------------------------------------------- checks
_COUNT = re.compile(r"(^|_)(episodes|epochs|steps|batch_size|hidden|layers|lessons|iterations|"
                    r"samples|particles|threads|horizon|rounds|starts|ncond|npred|k)$")
_POSITIVE = re.compile(r"(^|_)(lr|dt)$")
_FRACTION = re.compile(r"(^|_)(dropout|p_z|keep_elites)$")


def check_values(config: Any, where: str = "config") -> None:
    """Value checks that hold for every task: types match the annotations, numbers are
    finite, counts are >= 0, ``seed`` >= 0, learning rates and time steps > 0, dropout
    probabilities in [0, 1). Tasks add their own through ``Task.validate``."""
    from_dict(type(config), _plain(to_dict(config)), where)
    for name, value in _leaves(to_dict(config)):
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be finite, got {value}")
        if leaf == "seed" and value < 0:
            raise ValueError(f"{where}: seed must be >= 0, got {value}")
        if _COUNT.search(leaf) and isinstance(value, int) and value < 0:
            raise ValueError(f"{where}: {name} must be >= 0, got {value}")
        if _POSITIVE.search(leaf) and value <= 0:
            raise ValueError(f"{where}: {name} must be positive, got {value}")
        if _FRACTION.search(leaf) and not 0 <= value < 1:
            raise ValueError(f"{where}: {name} must be in [0, 1), got {value}")


def _leaves(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        out = []
        for k, v in data.items():
            out.extend(_leaves(v, f"{prefix}{k}."))
        return out
    return [(prefix[:-1], data)]


def differences(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Leaf fields whose values differ between two configs of one class, runtime fields
    (:data:`RUNTIME_FIELDS`) left out: dotted name -> (old, new)."""
    a = dict(_leaves(_plain(to_dict(old))))
    b = dict(_leaves(_plain(to_dict(new))))
    return {k: (a.get(k), b.get(k)) for k in b
            if a.get(k) != b.get(k) and k.rsplit(".", 1)[-1] not in RUNTIME_FIELDS}


def record_name(diff: dict[str, tuple[Any, Any]]) -> str:
    """A short, file-name-safe label of the settings in ``diff``: ``seed424242``,
    ``episodes50-seed7``; long ones fall back to a hash."""
    import hashlib

    parts = []
    for key in sorted(diff):
        value = diff[key][1]
        text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        joined = f"{key}{text}" if numeric else f"{key}_{text}"  # seed424242, planner_cem
        parts.append(re.sub(r"[^A-Za-z0-9.]+", "_", joined).strip("_"))
    label = "-".join(parts)
    if len(label) > 60:
        label = "settings" + hashlib.sha1(label.encode()).hexdigest()[:8]
    return label
