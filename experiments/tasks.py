"""What a task plugs into the CLI: its config class, presets and stages."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worldplan.errors import UserError
from worldplan.experiments.runs import Run

STAGES = ("collect", "train-model", "train-policy", "evaluate")

# task name -> module defining ``TASK``; imported only when the task is run.
TASK_MODULES: dict[str, str] = {
    "truck": "worldplan.experiments.truck",
    "highway": "worldplan.experiments.highway",
    "mujoco": "worldplan.experiments.mujoco",
    "navigation": "worldplan.experiments.navigation",
    "filters": "worldplan.experiments.filters",
}

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


def available_tasks() -> list[str]:
    """Tasks whose module is present in this installation."""
    return [name for name, mod in TASK_MODULES.items() if importlib.util.find_spec(mod)]


def load_task(name: str) -> Task:
    if name not in TASK_MODULES or importlib.util.find_spec(TASK_MODULES[name]) is None:
        raise UnknownNameError(
            f"unknown task {name!r}; available: {', '.join(available_tasks()) or 'none'}"
        )
    return importlib.import_module(TASK_MODULES[name]).TASK
