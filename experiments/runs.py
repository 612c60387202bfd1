"""Run folders: ``runs/<task>/<timestamp>-<name>/`` with the resolved config, metrics,
TensorBoard events, checkpoints, figures and videos (DESIGN.md, "Data sets and runs")."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from worldplan.worldmodels.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

RUN_MARKER = "run.json"


class RunError(ValueError):
    """A run folder that cannot be used as asked."""


class Run:
    """One run folder. Create it with :meth:`create` or reopen it with :meth:`open`."""

    def __init__(self, path: Path, task: str) -> None:
        self.path = Path(path)
        self.task = task
        self._writer = None
        self.resume = False  # set by the CLI: continue training from checkpoints/last

    # -- creation -----------------------------------------------------------------
    @classmethod
    def default_path(cls, task: str, name: str, root: Path = Path("runs")) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / task / f"{stamp}-{name}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = root / task / f"{stamp}-{name}-{suffix}"
        return path

    @classmethod
    def create(cls, path: Path, task: str) -> Run:
        """Create a new run folder (or adopt an empty existing one)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"run folder {path} exists and is not a folder")
        if path.exists() and any(path.iterdir()) and not (path / RUN_MARKER).exists():
            raise RunError(f"{path} is not empty and is not a worldplan run; pick another --run")
        path.mkdir(parents=True, exist_ok=True)
        marker = path / RUN_MARKER
        if marker.exists():
            return cls.open(path, task)
        atomic_write_text(marker, json.dumps({"task": task, "created": time.time()}) + "\n")
        return cls(path, task)

    @classmethod
    def open(cls, path: Path, task: str) -> Run:
        """Reopen an existing run of ``task``; fails if it is missing or of another task."""
        path = Path(path)
        marker = path / RUN_MARKER
        if not path.is_dir():
            raise RunError(f"run folder {path} does not exist")
        if not marker.is_file():
            raise RunError(f"{path} is not a worldplan run folder (no {RUN_MARKER})")
        try:
            owner = json.loads(marker.read_text())["task"]
        except (ValueError, KeyError):
            raise RunError(f"{marker} is corrupt") from None
        if owner != task:
            raise RunError(f"run folder {path} belongs to task {owner!r}, not {task!r}")
        return cls(path, task)

    # -- layout ---------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def subdir(self, name: str) -> Path:
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def checkpoints(self) -> Path:
        return self.subdir("checkpoints")

    @property
    def figures(self) -> Path:
        return self.subdir("figures")

    @property
    def videos(self) -> Path:
        return self.subdir("videos")

    @property
    def data(self) -> Path:
        return self.path / "data"

    # -- metrics and logs ---------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        if not self.metrics_path.exists():
            return {}
        try:
            return json.loads(self.metrics_path.read_text())
        except ValueError:
            raise RunError(f"{self.metrics_path} is corrupt") from None

    def update_metrics(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` under ``section`` into metrics.json (atomic rewrite)."""
        metrics = self.metrics()
        metrics.setdefault(section, {}).update(values)
        atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        return metrics

    def writer(self):
        """The run's TensorBoard ``SummaryWriter`` (created on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.subdir("tensorboard")))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
