"""What a command will do on a run, decided before any work (experiments/cli.py runs it):
which stages run, skip or resume, under which record, and with which settings."""

from __future__ import annotations

from typing import Any

from worldplan.experiments.config import differences, record_name
from worldplan.experiments.runs import Run, RunError
from worldplan.experiments.tasks import Task


class Plan:
    """What a command will do, decided before any work: which stages run, skip or resume,
    under which record, and with which settings.

    A config that differs from the run's config.yaml: an evaluation alone writes its own
    record. A command that runs a stage making data or models refuses the change, unless
    the task declares which stage reads which settings (``Task.sections``): then the
    settings of the stages it runs and of later ones may change, those of an earlier stage
    that has made its outputs may not; the new config becomes the run's config.yaml, a
    completed stage that reads a changed setting (or comes after one that runs again) runs
    again, and the completion of a later stage not run now is forgotten.
    """

    def __init__(self, task: Task, stages: list[str], run: Run | None, recorded: Any | None,
                 config: Any, explicit: bool) -> None:
        self.steps: list[tuple[str, str, str]] = []  # (stage, record, action)
        started = set(run.stages_started()) if run is not None else set()
        self.write_config = recorded is None or not started
        diff = {} if recorded is None else differences(recorded, config)
        # stage -> the changed settings it runs again with (recorded in its marker)
        self.changed: dict[str, dict[str, tuple[Any, Any]]] = {}
        self.forget: list[str] = []  # completed later stages that the change makes stale
        # extra evaluation records (``evaluate-seed7``) made with what the change replaces
        self.forget_records: list[str] = []
        adopt = bool(diff and started and task.sections) and _check_changes(
            task, stages, run, diff)
        if adopt:
            self.write_config = True
        order = task.stage_order()
        rerun_from: int | None = None  # the first stage that runs again with the change
        making_to_run = []
        for stage in stages:
            state = run.stage_state(stage) if run is not None else "new"
            if task.makes(stage):
                stale = adopt and (any(stage in task.readers(k) for k in diff) or (
                    rerun_from is not None and order.index(stage) > rerun_from))
                if state == "done" and not stale:
                    self.steps.append((stage, stage, "skip"))
                    continue
                making_to_run.append(stage)
                if stale:
                    self.changed[stage] = diff
                    rerun_from = order.index(stage) if rerun_from is None else rerun_from
                    action = "run"  # its checkpoints were made with the old settings
                else:
                    action = "resume" if state == "interrupted" else "run"
                self.steps.append((stage, stage, action))
            else:
                record = stage
                if adopt:
                    self.changed[stage] = diff
                if diff and not self.write_config:
                    record = f"{stage}-{record_name(diff)}"
                self.steps.append((stage, record, "run"))
        if adopt and run is not None:
            self.forget = [s for s in order if s not in stages
                           and run.stage_state(s) in ("done", "interrupted")
                           and (any(s in task.readers(k) for k in diff) or (
                               rerun_from is not None and order.index(s) > rerun_from))]
            # a record of a stage that runs again or is forgotten evaluated the earlier
            # models (or settings): no table may show it beside the new results
            again = set(self.forget) | set(self.changed)
            self.forget_records = [r for r in run.records_done() if r not in task.stages
                                   and any(r.startswith(f"{s}-") for s in again)]
        if making_to_run and diff and started and not adopt:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items())[:4])
            raise RunError(
                f"run {run.path} was made with other settings ({changes}); "
                f"{making_to_run[0]} cannot continue it with these: drop the overrides, or "
                "start a new --run (an evaluation alone may use other settings)")
        if explicit and run is not None:
            first = order.index(stages[0])
            for earlier in order[:first]:
                state = run.stage_state(earlier)
                if task.makes(earlier) and state in ("interrupted", "stale"):
                    why = ("was interrupted; finish it first" if state == "interrupted" else
                           "was made with earlier settings; run it again first")
                    raise RunError(
                        f"stage {earlier} of run {run.path} {why}: "
                        f"`worldplan {task.name} {earlier} --run {run.path}` (or `all`)")
        self.diff = diff if not self.write_config else {}


def _check_changes(task: Task, stages: list[str], run: Run,
                   diff: dict[str, tuple[Any, Any]]) -> bool:
    """Whether a command running ``stages`` may change the settings in ``diff`` of a
    started run (one :class:`RunError` naming the first setting it may not). True: the
    change becomes the run's config (a stage that makes data or models runs); False: an
    evaluation alone, which writes its own record."""
    order = task.stage_order()
    first = order.index(stages[0])
    making = any(task.makes(s) for s in stages)
    for key, (old, new) in sorted(diff.items()):
        readers = task.readers(key)
        if making:
            made = [r for r in readers if order.index(r) < first and task.makes(r)
                    and run.stage_state(r) != "new"]
            if made:
                raise RunError(
                    f"run {run.path} made its {made[0]} stage with {key} = {old!r}; "
                    f"{stages[0]} cannot change it to {new!r}: drop the override, or start "
                    "a new --run")
        elif not set(stages) & set(readers):
            raise RunError(
                f"{key} is a setting of {readers[0]}, which {stages[0]} does not read: drop "
                f"the override, or run `worldplan {task.name} {readers[0]} --run {run.path}` "
                "with it")
    return making
