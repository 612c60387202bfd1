"""The ``worldplan`` command: ``worldplan <task> <stage> [options] [config overrides]``.

Common options are parsed here; every other ``--field value`` overrides the task's
dataclass config (``worldplan truck all --help`` lists them all).

Every stage of every task runs in one skeleton (:func:`run_cli`):

1. the whole configuration is built and checked (types, value ranges, the device, the run
   folder and its files) before anything is written;
2. a stage that already completed in the run is skipped; one that was interrupted
   (Ctrl-C, a kill, an error) continues from its checkpoints, or starts again, and the log
   says which; a stage is complete only once its ``done`` marker is written, last;
3. ``config.yaml`` records how the run's data and models were made. An evaluation alone
   with other settings writes its own record (``evaluate-seed424242`` in metrics.json,
   ``figures/evaluate-seed424242/``). A task says which stage reads which settings
   (``Task.sections``): a command may change the settings of the stages it runs and of
   later ones (never those of an earlier stage that made its outputs), config.yaml takes
   them, a completed stage they concern runs again, replacing its files and metrics
   sections, and its metrics and marker record them (experiments/plan.py); a task
   without sections refuses other settings for a stage that makes data or models;
4. a command that fails leaves no new empty run folder behind, and the end of an
   evaluation prints the summary table (``worldplan <task> show --run R`` prints it again).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from worldplan.errors import (
    UserError,
    about_users_files,
    caused_by_interrupt,
    os_error_line,
    silence_stdout,
)
from worldplan.experiments.common import BriefNumbers, configure_progress, resolve_device
from worldplan.experiments.config import (
    check_values,
    from_dict,
    load_yaml,
    parse_overrides,
    save_yaml,
    to_dict,
    to_yaml,
)
from worldplan.experiments.plan import Plan
from worldplan.experiments.runs import Run
from worldplan.experiments.summary import format_table, summary_rows
from worldplan.experiments.tasks import STAGES, Task, UnknownNameError, available_tasks, load_task

log = logging.getLogger("worldplan")

# Bad input is a UserError (worldplan/errors.py; CheckpointError, RunError, UsageError and
# UnknownNameError are ones): one line and exit code 2. Anything else is a bug and shows
# its traceback, however deep the ValueError or KeyError it raises.
USER_ERRORS = (UserError,)
COMMANDS = ("all", "show")


class UsageError(UserError):
    """A malformed command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through main(), not argparse's usage dump
        raise UsageError(f"{message} (see `worldplan --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="worldplan",
        add_help=False,
        description="Model-based planning and control with learned world models.",
    )
    p.add_argument("task", nargs="?", help="task: " + ", ".join(available_tasks()))
    p.add_argument("stage", nargs="?", help="stage: " + ", ".join((*STAGES, *COMMANDS)))
    p.add_argument("--preset", default=None, help="config preset (default, quick, ...)")
    p.add_argument("--run", type=Path, action="append", default=None,
                   help="run folder to create or continue (twice with show: compare)")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue the existing run RUN_DIR (like --run, which may create it)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-h", "--help", action="store_true")
    return p


def _help_hint(task: Task) -> str:
    return f"`worldplan {task.name} all --help` lists the fields"


def _help_config(task: Task, args: argparse.Namespace, rest: list[str]) -> Any:
    """The config whose values ``--help`` shows: the preset with the given overrides (the
    plain preset if they do not parse), with per-environment defaults filled in."""
    preset = args.preset if args.preset in task.presets else "default"
    config = task.presets[preset]()
    if rest:
        try:
            config = parse_overrides(config, rest, _help_hint(task))
        except ValueError:
            pass  # help is still shown, for the preset
    if task.shown_defaults is not None:
        config = task.shown_defaults(config)
    return config


def _print_task_help(task: Task, stage: str | None, config: Any) -> None:
    import tyro

    print(f"usage: worldplan {task.name} {{{','.join((*task.stage_order(), *COMMANDS))}}} "
          "[common options] [--group.field VALUE ...]\n")
    description = task.description.strip()
    print(description + "\n")
    described = {ln.split()[0] for ln in description.splitlines() if ln.split()}
    for stage in task.stage_order():  # one line per stage the description does not cover
        if stage not in described:
            doc = (task.stages[stage].__doc__ or "").strip().splitlines()
            print(f"{stage:13s} {doc[0] if doc else ''}")
    print("show          print the summary table of --run R (twice: compare two runs)\n")
    print("common options: --preset {" + ",".join(task.presets) + "}, --run DIR, "
          "--resume DIR, --seed N, --device D, --episodes N, --debug.\n"
          "Config fields (below) override the preset; a boolean also takes --no-FIELD.")
    if task.help_note:
        print(task.help_note.format(config=config))
    print()
    try:
        tyro.cli(task.config_cls, default=config, args=["--help"],
                 prog=f"worldplan {task.name} {stage or 'all'}", description="")
    except SystemExit:
        pass


def _base_config(task: Task, args: argparse.Namespace, recorded: Any | None) -> Any:
    if recorded is not None and args.preset is None:
        return recorded  # continue with the run's own config
    preset = args.preset or "default"
    if preset not in task.presets:
        raise UnknownNameError(
            f"unknown preset {preset!r} for task {task.name}; "
            f"available: {', '.join(task.presets)}"
        )
    return task.presets[preset]()


def build_config(task: Task, args: argparse.Namespace, rest: list[str],
                 recorded: Any | None) -> Any:
    """The preset (or the run's recorded config) with the overrides and common flags,
    checked whole: types, value ranges, the task's own checks, the device."""
    config = _base_config(task, args, recorded)
    if rest:
        config = parse_overrides(config, rest, _help_hint(task))
    updates = {k: getattr(args, k) for k in ("seed", "device", "episodes")
               if getattr(args, k) is not None}
    if updates:
        config = from_dict(task.config_cls, {**to_dict(config), **updates})
    check_values(config)
    if hasattr(config, "validate"):
        config.validate()
    if task.validate is not None:
        task.validate(config)
    resolve_device(config.device)
    return config


def _run_path(args: argparse.Namespace) -> Path | None:
    runs = args.run or []
    if len(runs) > 1:
        raise UsageError("give --run once (twice only with `show`)")
    if args.resume is not None and runs and args.resume != runs[0]:
        raise UsageError("give --run or --resume, not two different folders")
    return args.resume or (runs[0] if runs else None)


def _missing_parents(path: Path) -> list[Path]:
    """The folders ``mkdir -p path`` would create, deepest first (path included)."""
    out = []
    while not path.exists():
        out.append(path)
        if path.parent == path:
            break
        path = path.parent
    return out


def _show(task: Task, args: argparse.Namespace) -> int:
    runs = args.run or ([args.resume] if args.resume else [])
    if not runs or len(runs) > 2:
        raise UsageError(f"show needs --run R (or --run R1 --run R2 to compare), e.g. "
                         f"`worldplan {task.name} show --run runs/{task.name}/...`")
    tables = []
    for path in runs:
        run = Run.open(path, task.name)
        tables.append((str(path), summary_rows(run.metrics())))
    print(format_table(tables))
    return 0


def run_cli(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    if args.task is None:
        _parser().print_help()
        print("\ntasks:", ", ".join(available_tasks()))
        return 0 if args.help else 2
    task = load_task(args.task)
    if args.help:
        _print_task_help(task, args.stage, _help_config(task, args, rest))
        return 0
    if args.stage is None:
        raise UsageError(f"give a stage: worldplan {task.name} "
                         f"{{{','.join((*task.stage_order(), *COMMANDS))}}}")
    if args.stage == "show":
        if rest:
            raise UsageError(f"show takes no config overrides, got {' '.join(rest)}")
        return _show(task, args)
    stages = task.stage_order() if args.stage == "all" else [args.stage]
    for stage in stages:
        if stage not in task.stages:
            raise UnknownNameError(
                f"unknown stage {stage!r} for task {task.name}; available: "
                + ", ".join((*task.stage_order(), *COMMANDS))
            )
    # -- everything is checked before anything is written --------------------------------
    path = _run_path(args)
    run: Run | None = None
    try:  # judging the command line, the config and the run folder: what fails is input
        if args.resume is not None or (path is not None and (path / "run.json").exists()):
            run = Run.open(path, task.name)
            Run.check_creatable(run.path)  # still writable
            run.check_files()
        else:
            path = path or Run.default_path(task.name, args.preset or "default")
            Run.check_creatable(path)
        recorded = None
        if run is not None and run.config_path.exists():
            recorded = load_yaml(task.config_cls, run.config_path)
        config = build_config(task, args, rest, recorded)
        plan = Plan(task, stages, run, recorded, config, explicit=args.stage != "all")
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:
        raise UserError(os_error_line(exc)) from exc
    # -- work -------------------------------------------------------------------------
    new_run = run is None
    created = _missing_parents(path) if new_run else []
    if run is None:
        try:
            run = Run.create(path, task.name)
        except OSError as exc:  # the folder the user named cannot be made
            raise UserError(os_error_line(exc)) from exc
    log.info("run folder: %s", run.path)
    log.info("config:\n%s", to_yaml(config))
    if plan.write_config:
        save_yaml(config, run.config_path)
    try:
        _run_stages(task, config, run, plan)
    except BaseException as exc:
        if new_run and run.remove_if_empty(created):
            log.info("removed %s: the command left nothing in it", run.path)
        if isinstance(exc, OSError) and about_users_files(exc, run.path):
            raise UserError(os_error_line(exc)) from exc
        if isinstance(exc, USER_ERRORS) and exc.args and isinstance(exc.args[0], str):
            exc.args = (_name_the_run(exc.args[0], run.path), *exc.args[1:])
        raise
    finally:
        run.close()
    if any(stage == "evaluate" for stage, _r, action in plan.steps if action != "skip"):
        print(format_table([(str(run.path), summary_rows(run.metrics()))]))
    log.info("done: %s", run.path)
    return 0


def _name_the_run(message: str, path: Path) -> str:
    """Hints like "run `worldplan truck train-policy`" name the run folder to use."""
    return re.sub(r"`worldplan (\w+) ([\w-]+)`",
                  lambda m: f"`worldplan {m.group(1)} {m.group(2)} --run {path}`"
                  if "--run" not in m.group(0) else m.group(0), message)


def _run_stages(task: Task, config: Any, run: Run, plan: Plan) -> None:
    device = str(resolve_device(config.device))
    for stage in plan.forget:
        log.info("== %s %s: made with the earlier settings; it will run again ==", task.name,
                 stage)
        run.forget_stage(stage)
    for record in plan.forget_records:
        log.info("== %s %s: made with the earlier settings; its metrics move to "
                 "%s-earlier ==", task.name, record, record)
        run.forget_stage(record)
    for stage, record, action in plan.steps:
        if action == "skip":
            info = run.stage_info(stage)
            log.info("== %s %s: complete (finished %s); skipping ==", task.name, stage,
                     info.get("finished", "earlier"))
            continue
        run.record = None if record == stage else record[len(stage) + 1:]
        # a stage that does not continue an interrupted run of itself starts from scratch:
        # it removes its earlier files (Run.start_fresh), and its first write of a metrics
        # section replaces that of its earlier run (start_stage's fresh)
        run.resume = action == "resume" and stage in task.resumable
        if action == "resume":
            how = ("continuing it from its checkpoints" if stage in task.resumable
                   else "starting it again")
            log.info("== %s %s: interrupted earlier; %s ==", task.name, stage, how)
        elif stage in plan.changed:
            log.info("== %s %s with the run's new settings (%s) ==", task.name, stage,
                     _settings_text(plan.changed[stage]))
        else:
            log.info("== %s %s%s ==", task.name, stage,
                     f" (record {record}: {_settings_text(plan.diff)})" if run.record else "")
        info: dict[str, Any] = {"stage": stage, "device": device, "action": action}
        if run.record:
            info["settings"] = {k: b for k, (_a, b) in plan.diff.items()}
        elif stage in plan.changed:
            info["settings"] = {k: b for k, (_a, b) in plan.changed[stage].items()}
            info["previous"] = {k: a for k, (a, _b) in plan.changed[stage].items()}
        started = run.start_stage(record, info, fresh=not run.resume)
        task.stages[stage](config, run)
        if "settings" in info:
            run.update_metrics(stage, {"_settings": info["settings"]})
        summary = run.finish_stage(record, started)
        log.info("%s %s: %.1f s (%.1f s CPU, load %s)", task.name, record, summary["seconds"],
                 summary["cpu_seconds"], summary["loadavg"][0])
    run.record = None


def _settings_text(diff: dict) -> str:
    return ", ".join(f"{k}={b}" for k, (_a, b) in sorted(diff.items()))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    configure_progress()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, BriefNumbers) for f in handler.filters):
            handler.addFilter(BriefNumbers())
    debug = "--debug" in argv
    try:
        code = run_cli(argv)
    except BrokenPipeError:
        # the reader of our output went away (`worldplan truck all --help | head`): not an
        # error of the command; stop writing to the closed pipe, quietly
        silence_stdout()
        code = 1
    except Exception as exc:
        if caused_by_interrupt(exc):
            code = _interrupted()
        elif debug or not isinstance(exc, USER_ERRORS):
            raise
        else:
            print(f"worldplan: error: {exc}", file=sys.stderr)
            code = 2
    except KeyboardInterrupt:
        code = _interrupted()
    sys.exit(code)


def _interrupted() -> int:
    print("worldplan: interrupted; run the same command again to continue", file=sys.stderr)
    return 130


if __name__ == "__main__":
    main()
