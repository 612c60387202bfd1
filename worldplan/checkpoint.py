"""Crash-safe files: every write goes to a temporary file in the same folder, is flushed
to disk, then renamed over the target, so a killed process never leaves a torn file.

Checkpoints hold plain data (``state_dict``s, configs, statistics) and a schema
version, never pickled modules, and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from worldplan.errors import UserError

CHECKPOINT_SCHEMA = 1


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match what the caller expects."""


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename), with the
    mode a plain ``open`` would give it (``mkstemp`` alone makes it owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Save a dict of tensors and plain data atomically, stamped with the schema version."""
    buffer = io.BytesIO()
    torch.save({"schema": CHECKPOINT_SCHEMA, **payload}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike, required: tuple[str, ...] = (), kind: str | None = None
) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` on the CPU.

    Raises :class:`CheckpointError` naming the path when the file is missing, truncated,
    not a checkpoint, of another schema or ``kind``, or lacks a ``required`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a torn or foreign file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({exc.__class__.__name__})"
        ) from None
    if not isinstance(payload, dict) or "schema" not in payload:
        raise CheckpointError(f"{path} is not a worldplan checkpoint (no schema version)")
    if payload["schema"] != CHECKPOINT_SCHEMA:
        raise CheckpointError(
            f"checkpoint {path} has schema {payload['schema']}, "
            f"this worldplan reads {CHECKPOINT_SCHEMA}"
        )
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(
            f"checkpoint {path} holds a {payload.get('kind')!r}, expected {kind!r}"
        )
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    return payload


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict, source: str) -> None:
    """``module.load_state_dict`` with one clear line when the shapes or keys disagree."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {source} does not match {type(module).__name__}: "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {source} does not match {type(module).__name__}: {key} has shape "
                f"{list(value.shape)} in the checkpoint, {list(own[key].shape)} in the model"
            )
    module.load_state_dict(state_dict)
