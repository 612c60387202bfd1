"""The task registry: what a task plugs into the CLI (its config class, presets, stages).

A task is one module that, when imported, calls :func:`register_task` with its
:class:`Task` (and, for an environment of its own, ``worldplan.envs.register_env``). The
registry finds the module without importing anything else: the suite's own tasks are
listed in :data:`TASK_MODULES`; a task of another distribution declares itself as an entry
point of the group :data:`ENTRY_POINT_GROUP` (``toy = "mypackage.toy_task"``). A task is
imported only when it is run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worldplan.errors import UserError
from worldplan.experiments.runs import Run

STAGES = ("collect", "train-model", "train-policy", "evaluate")

# The suite's own tasks: task name -> the module that registers it (the one list).
TASK_MODULES: dict[str, str] = {
    "truck": "worldplan.experiments.truck",
    "highway": "worldplan.experiments.highway",
    "mujoco": "worldplan.experiments.mujoco",
    "navigation": "worldplan.experiments.navigation",
    "filters": "worldplan.experiments.filters",
}
# Tasks of other distributions: entry points ``name = "module"`` of this group.
ENTRY_POINT_GROUP = "worldplan.tasks"

Stage = Callable[[Any, Run], None]


@dataclass(frozen=True)
class Task:
    """A task's entry in the CLI.

    ``presets`` build a full config (``default`` is required; ``quick`` is the
    smoke-sized one). ``stages`` maps stage names to ``fn(config, run)``; ``all``
    runs them in :data:`STAGES` order. A config has at least ``seed``, ``device`` and
    ``episodes`` fields, which the common flags set. The CLI wraps every stage in the
    same skeleton (experiments/cli.py): checks first, completion markers, resume.
    """

    name: str
    config_cls: type
    presets: dict[str, Callable[[], Any]]
    stages: dict[str, Stage]
    description: str = ""
    # Value-range checks of the whole config, run before any stage does work (the CLI also
    # calls the config's own ``validate()`` method when it has one).
    validate: Callable[[Any], None] | None = None
    # Stages that, run again after an interruption, continue from their checkpoints (the
    # CLI sets ``run.resume`` for them); the others start again from the beginning, as
    # every stage does when it runs again for other settings.
    resumable: tuple[str, ...] = ()
    # ``config -> config`` with every "use the default" placeholder (0, -1, "auto") replaced
    # by the value the stages will use for that config's environment and planner; ``--help``
    # shows these values. ``help_note`` says what they depend on.
    shown_defaults: Callable[[Any], Any] | None = None
    help_note: str = ""
    # stage -> the config fields it reads, as dotted prefixes ("policy" is the whole
    # section, "policy.seeds" one field); a field no stage lists is read by every stage
    # (the seed). With it the CLI lets a command change the settings of the stages it runs
    # (and of later ones) on an existing run, and refuses those of earlier stages that
    # already made their outputs (experiments/plan.py); without it a stage that makes data
    # or models refuses any change to a started run.
    sections: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(self.stages))
        if unknown:
            raise ValueError(f"task {self.name}: sections name unknown stage(s) "
                             f"{', '.join(unknown)}; its stages: {', '.join(self.stages)}")

    def stage_order(self) -> list[str]:
        return [s for s in STAGES if s in self.stages]

    def readers(self, key: str) -> list[str]:
        """The stages (in order) that read the config field ``key`` (dotted), per
        :attr:`sections`; every stage when none lists it."""
        hits = [s for s in self.stage_order()
                if any(key == p or key.startswith(p + ".") for p in self.sections.get(s, ()))]
        return hits or self.stage_order()

    @staticmethod
    def makes(stage: str) -> bool:
        """Whether ``stage`` makes the run's data or models (everything but ``evaluate``):
        those follow config.yaml; an evaluation with other settings gets its own record."""
        return stage != "evaluate"


class UnknownNameError(UserError):
    """An unknown task, stage or preset name."""


# task name -> the registered task (filled by ``register_task`` as task modules import)
_REGISTERED: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (called by the task's module at import); returns it.

    A task is known by the module of its config class: registering a name again with a
    config class of the same module (the module reloaded) replaces the entry; of another
    module, it is an error.
    """
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a Task, got {type(task).__name__}")
    old = _REGISTERED.get(task.name)
    if old is not None and _module_of(old) != _module_of(task):
        raise ValueError(f"task {task.name!r} is registered twice: by {_module_of(old)} "
                         f"and by {_module_of(task)}")
    _REGISTERED[task.name] = task
    return task


def _module_of(task: Task) -> str:
    """The module that defines the task's config class (where the task lives)."""
    return getattr(task.config_cls, "__module__", "?")


def _entry_point_modules() -> dict[str, str]:
    """Task name -> module of every installed entry point of :data:`ENTRY_POINT_GROUP`."""
    return {ep.name: ep.value.split(":")[0].strip()
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def task_modules() -> dict[str, str]:
    """Every task this installation can run: name -> module that registers it (the suite's
    own first; a name the suite uses cannot be taken by an entry point)."""
    found = dict(TASK_MODULES)
    for name, module in _entry_point_modules().items():
        found.setdefault(name, module)
    for name, task in _REGISTERED.items():
        found.setdefault(name, _module_of(task))
    return found


def available_tasks() -> list[str]:
    """Tasks whose module is present in this installation (none is imported)."""
    return [name for name, mod in task_modules().items()
            if name in _REGISTERED or _spec(mod) is not None]


def _spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a missing parent package
        return None


def load_task(name: str) -> Task:
    """The registered task ``name``, importing its module first if need be."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    module = task_modules().get(name)
    if module is None or _spec(module) is None:
        raise UnknownNameError(
            f"unknown task {name!r}; available: {', '.join(available_tasks()) or 'none'}"
        )
    importlib.import_module(module)
    if name not in _REGISTERED:
        raise UnknownNameError(f"module {module} registers no task {name!r}: it must call "
                               f"worldplan.experiments.tasks.register_task(Task(name={name!r}, "
                               "...)) at import")
    return _REGISTERED[name]
