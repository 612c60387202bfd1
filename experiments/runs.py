"""Run folders: ``runs/<task>/<timestamp>-<name>/`` with the resolved config, metrics,
TensorBoard events, checkpoints, figures and videos (docs/architecture.md, "Runs").

Besides the stages' own files a run holds its bookkeeping:

- ``run.json``: which task the folder belongs to;
- ``config.yaml``: the configuration its data and models were made with (written once,
  before the first stage; never rewritten by an evaluation with other settings);
- ``stages/<record>.{started,done,forgotten}.json``: a stage counts as
  complete only when its ``done`` marker exists and no newer ``started`` marker does. The
  ``done`` marker is written last and atomically, after every output of the stage, so a
  stage interrupted at any point (Ctrl-C, SIGKILL, an error) is seen as interrupted. It
  lists the metrics.json sections the stage wrote (``sections``), so a stage that runs
  again or is forgotten takes exactly its own sections with it. A ``forgotten`` marker
  says a completed stage was made stale by other settings of an earlier one.

Length: one class, the run folder; its layout, stage markers, metrics and housekeeping
share the folder's paths and are read together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worldplan.checkpoint import atomic_write_text, current_umask
from worldplan.errors import UserError

log = logging.getLogger(__name__)

RUN_MARKER = "run.json"
STAGES_DIR = "stages"
# Files the CLI writes for itself: a run folder holding only these has no result in it.
BOOKKEEPING = (RUN_MARKER, "config.yaml")


class RunError(UserError):
    """A run folder that cannot be used as asked."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the run, or one clear error naming it and how to recover."""
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path} is corrupt ({what}: {exc}); move it aside "
                       f"(mv {path} {path}.bad) and run again") from None
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror}") from None


class _OneTagWriter:
    """A TensorBoard writer that keeps one tag per quantity: ``<prefix>/mse`` is dropped
    when it repeats, at the same step, the value just logged as ``<prefix>/train_step_loss``
    (a deterministic model's loss is its MSE: one series, not two)."""

    ALIASES = {"mse": "train_step_loss"}

    def __init__(self, writer) -> None:
        self._writer = writer
        self._last: dict[tuple[str, int], float] = {}

    def add_scalar(self, tag: str, value, step=None, *args, **kwargs):
        prefix, _, name = tag.rpartition("/")
        value_f = float(value)
        if name in self.ALIASES:
            key = (f"{prefix}/{self.ALIASES[name]}", step)
            if self._last.get(key) == value_f:
                return None
        if name in self.ALIASES.values():
            self._last = {k: v for k, v in self._last.items() if k[0] != tag}
            self._last[(tag, step)] = value_f
        return self._writer.add_scalar(tag, value, step, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


class Run:
    """One run folder. Create it with :meth:`create` or reopen it with :meth:`open`."""

    def __init__(self, path: Path, task: str) -> None:
        self.path = Path(path)
        self.task = task
        self._writer = None
        # set by the CLI for a resumable stage that continues an interrupted run of itself:
        # continue from checkpoints/last, keep what it finished; else start from scratch
        self.resume = False
        # Set by the CLI for an evaluation whose settings differ from config.yaml: its
        # metrics sections, figures and videos get this suffix (e.g. "seed424242").
        self.record: str | None = None
        # metrics.json sections written since the current stage started (its marker lists
        # them); None outside a stage
        self._written: set[str] | None = None
        # sections of the current stage's earlier completion still to be replaced
        self._replace: set[str] = set()

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

    @staticmethod
    def check_creatable(path: Path) -> None:
        """Fail (before anything is written) if ``path`` cannot become a run folder."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"run folder {path} exists and is not a folder")
        if path.is_dir():
            try:
                entries = list(path.iterdir())
            except OSError as exc:
                raise RunError(f"cannot read run folder {path}: {exc.strerror}") from None
            if entries and not (path / RUN_MARKER).exists():
                raise RunError(f"{path} is not empty and is not a worldplan run; "
                               "pick another --run")
            target = path
        else:
            target = path.parent
            while not target.exists():
                target = target.parent
            if not target.is_dir():
                raise RunError(f"cannot create run folder {path}: {target} is not a folder")
        if not os.access(target, os.W_OK | os.X_OK):
            raise RunError(f"cannot write into {target} (permission denied); "
                           "pick a --run folder you can write to")

    @classmethod
    def create(cls, path: Path, task: str) -> Run:
        """Create a new run folder (or adopt an empty existing one)."""
        path = Path(path)
        cls.check_creatable(path)
        marker = path / RUN_MARKER
        if marker.exists():
            return cls.open(path, task)
        path.mkdir(parents=True, exist_ok=True)
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
        data = read_json(marker, "run marker")
        owner = data.get("task") if isinstance(data, dict) else None
        if not isinstance(owner, str):
            raise RunError(f"{marker} is corrupt (no task named in it)")
        if owner != task:
            raise RunError(f"run folder {path} belongs to task {owner!r}, not {task!r}")
        return cls(path, task)

    def check_files(self) -> None:
        """Read every bookkeeping file once, so a corrupt one stops the command before any
        stage does work (the file is named, with how to recover; nothing is changed)."""
        self.metrics()
        folder = self.path / STAGES_DIR
        if folder.is_dir():
            for marker in sorted(folder.glob("*.json")):
                if not isinstance(read_json(marker, "stage marker"), dict):
                    raise RunError(f"{marker} is corrupt (not a mapping); move it aside and "
                                   "run again")

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
        """``figures/`` (``figures/evaluate-<record>/`` for an evaluation with other
        settings)."""
        return self.subdir("figures" if self.record is None else f"figures/{self._folder()}")

    @property
    def videos(self) -> Path:
        return self.subdir("videos" if self.record is None else f"videos/{self._folder()}")

    def _folder(self) -> str:
        return f"evaluate-{self.record}"

    @property
    def data(self) -> Path:
        return self.path / "data"

    def section(self, name: str) -> str:
        """The metrics.json section a stage writes as ``name`` under the current record."""
        return name if self.record is None else f"{name}-{self.record}"

    # -- stage markers --------------------------------------------------------------
    def _marker(self, record: str, kind: str) -> Path:
        return self.path / STAGES_DIR / f"{record}.{kind}.json"

    def stage_state(self, record: str) -> str:
        """``done``, ``interrupted`` (started, never completed), ``stale`` (completed, then
        forgotten because its inputs or settings changed: its files are of the earlier
        settings until it runs again) or ``new``."""
        if self._marker(record, "started").exists():
            return "interrupted"
        if self._marker(record, "done").exists():
            return "done"
        return "stale" if self._marker(record, "forgotten").exists() else "new"

    def stage_info(self, record: str, kind: str = "done") -> dict[str, Any]:
        path = self._marker(record, kind)
        return read_json(path, "stage marker") if path.exists() else {}

    def stages_started(self) -> list[str]:
        folder = self.path / STAGES_DIR
        if not folder.is_dir():
            return []
        return sorted({p.name.split(".")[0] for p in folder.glob("*.json")})

    def start_stage(self, record: str, info: dict[str, Any], fresh: bool = False
                    ) -> dict[str, Any]:
        """Mark ``record`` started. ``fresh``: it runs from the beginning, so the metrics
        sections of its earlier run (those its ``done`` marker lists; ``record`` without
        one) are replaced: each one it writes again on its first write, the others when it
        completes (so a stage that fails early leaves metrics.json as it was, and one that
        completes leaves nothing of its earlier run beside the new values)."""
        replace = set(self.stage_sections(record)) if fresh else set()
        started = {**info, "started": _now(), "_t0": time.time(), "_cpu0": _cpu_seconds()}
        atomic_write_text(self._marker(record, "started"), json.dumps(started, indent=1) + "\n")
        self._written, self._replace = set(), replace
        return started

    def records_done(self) -> list[str]:
        """The records with a ``done`` marker: stages and extra evaluation records
        (``evaluate-seed7``; record names may hold dots)."""
        folder = self.path / STAGES_DIR
        suffix = ".done.json"
        return sorted(p.name[:-len(suffix)] for p in folder.glob(f"*{suffix}")) \
            if folder.is_dir() else []

    def stage_sections(self, record: str) -> list[str]:
        """The metrics.json sections the completed stage ``record`` wrote, per its ``done``
        marker (``[record]`` for a marker that does not list them)."""
        sections = self.stage_info(record).get("sections")
        if isinstance(sections, list) and all(isinstance(x, str) for x in sections):
            return sections
        return [record]

    def finish_stage(self, record: str, started: dict[str, Any]) -> dict[str, Any]:
        """Mark ``record`` complete: timings in metrics.json, then the ``done`` marker
        (last, atomically), then drop the ``started`` one."""
        t0, cpu0 = started.pop("_t0"), started.pop("_cpu0")
        stale, self._replace = self._replace, set()
        metrics = self.metrics()
        if stale & set(metrics):  # sections of the earlier run that this one did not write
            for name in stale:
                metrics.pop(name, None)
            atomic_write_text(self.metrics_path,
                              json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        summary = {**started, "finished": _now(), "seconds": round(time.time() - t0, 2),
                   "cpu_seconds": round(_cpu_seconds() - cpu0, 2),
                   "loadavg": [round(x, 2) for x in os.getloadavg()],
                   "sections": sorted(self._written or ())}
        self._written = None
        self.update_metrics("stages", {record: summary}, raw_section=True)
        self.normalise_permissions()
        atomic_write_text(self._marker(record, "done"), json.dumps(summary, indent=1) + "\n")
        self._marker(record, "started").unlink(missing_ok=True)
        self._marker(record, "forgotten").unlink(missing_ok=True)
        return summary

    def forget_stage(self, record: str) -> None:
        """Mark ``record`` as ``stale``, for a completed stage whose inputs or settings
        changed: no longer complete, its files stay until it runs again (which replaces
        them; no later stage may build on them before), each metrics.json section it wrote
        becomes ``<section>-earlier`` (so no table shows them as the run's current
        results)."""
        metrics = self.metrics()
        moved = [name for name in self.stage_sections(record) if name in metrics]
        if moved:
            for name in moved:
                metrics[f"{name}-earlier"] = metrics.pop(name)
            atomic_write_text(self.metrics_path,
                              json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        atomic_write_text(self._marker(record, "forgotten"),
                          json.dumps({"forgotten": _now()}) + "\n")
        for kind in ("done", "started"):
            self._marker(record, kind).unlink(missing_ok=True)

    def start_fresh(self, *paths: Path) -> None:
        """For a stage that runs from the beginning (``resume`` not set), after it has read
        its inputs: remove the files and folders it writes, so none made with earlier
        settings outlives it (a policy the new settings do not train, a figure that cannot
        be made now). A crash after this leaves the stage interrupted, never a mix of old
        and new files marked done. Does nothing when the stage continues an interrupted
        run of itself."""
        if self.resume:
            return
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    # -- metrics and logs ---------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        if not self.metrics_path.exists():
            return {}
        data = read_json(self.metrics_path, "metrics")
        if not isinstance(data, dict):
            raise RunError(f"{self.metrics_path} is corrupt (not a mapping); move it aside "
                           f"(mv {self.metrics_path} {self.metrics_path}.bad) and run again")
        return data

    def relative(self, value: Any) -> Any:
        """``value`` with every path inside the run folder made relative to it (so a run
        folder can be moved or shared); nested dicts and lists are walked."""
        if isinstance(value, dict):
            return {k: self.relative(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.relative(v) for v in value]
        if isinstance(value, Path) or (isinstance(value, str) and os.sep in value):
            p = Path(value)
            for base in (self.path, self.path.resolve()):
                root = base if p.is_absolute() == base.is_absolute() else None
                if root is not None:
                    try:
                        return str(p.relative_to(root))
                    except ValueError:
                        continue
            return str(value) if isinstance(value, Path) else value
        return value

    def update_metrics(self, section: str, values: dict[str, Any],
                       raw_section: bool = False) -> dict[str, Any]:
        """Merge ``values`` under ``section`` (suffixed with the current record unless
        ``raw_section``) into metrics.json (atomic rewrite)."""
        metrics = self.metrics()
        name = section if raw_section else self.section(section)
        if self._written is not None and not raw_section:
            self._written.add(name)
        if name in self._replace:  # the first write of a fresh stage: the earlier goes
            self._replace.discard(name)
            metrics.pop(name, None)
        metrics.setdefault(name, {}).update(self.relative(values))
        atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        return metrics

    @contextlib.contextmanager
    def optional_artefact(self, what: str) -> Iterator[None]:
        """For figures and videos: one that cannot be made (a missing renderer, an
        unwritable folder) is a logged warning, never a lost result."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # an optional artefact must not cost the run its metrics
            log.warning("could not write %s (%s: %s); the metrics are saved", what,
                        type(exc).__name__, exc)

    def writer(self):
        """The run's TensorBoard ``SummaryWriter`` (created on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = _OneTagWriter(SummaryWriter(log_dir=str(self.subdir("tensorboard"))))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- housekeeping -------------------------------------------------------------
    def normalise_permissions(self) -> None:
        """Give files and folders that libraries created owner-only (``mkstemp`` /
        ``mkdtemp`` make 0600 / 0700) the modes the user's umask asks for."""
        umask = current_umask()
        file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
        if not self.path.is_dir():
            return
        for root, dirs, files in os.walk(self.path):
            for name, mode in [(d, dir_mode) for d in dirs] + [(f, file_mode) for f in files]:
                p = os.path.join(root, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    continue
                owner_only = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
                if stat.S_IMODE(st.st_mode) == owner_only and owner_only != mode:
                    os.chmod(p, mode | (stat.S_IMODE(st.st_mode) & 0o100))

    def holds_results(self) -> bool:
        """Whether anything besides the CLI's bookkeeping (and empty folders) is here."""
        for root, _dirs, files in os.walk(self.path):
            rel = Path(root).relative_to(self.path)
            for name in files:
                if rel == Path(".") and name in BOOKKEEPING:
                    continue
                if rel.parts[:1] == (STAGES_DIR,):
                    continue
                return True
        return False

    def remove_if_empty(self, created: list[Path]) -> bool:
        """Undo the creation of this run when it holds no result, so a failed command
        leaves no empty run behind: the folder itself and the parents in ``created`` (made
        by this command, deepest first) are removed; a folder that existed (empty) before
        is kept, emptied of the bookkeeping written into it."""
        if not self.path.is_dir() or self.holds_results():
            return False
        self.close()
        if self.path in created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for child in self.path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        for parent in created:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty
        return True
