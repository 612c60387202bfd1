"""The ``worldplan`` command: ``worldplan <task> <stage> [options] [config overrides]``.

Common options are parsed here; every other ``--field value`` overrides the task's
dataclass config through tyro (``worldplan truck all --help`` lists them all).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from worldplan.experiments.config import from_dict, load_yaml, save_yaml, to_dict, to_yaml
from worldplan.experiments.runs import Run, RunError
from worldplan.experiments.tasks import STAGES, Task, UnknownNameError, available_tasks, load_task
from worldplan.worldmodels.checkpoint import CheckpointError

log = logging.getLogger("worldplan")

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CheckpointError, RunError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worldplan",
        add_help=False,
        description="Model-based planning and control with learned world models.",
    )
    p.add_argument("task", nargs="?", help="task: " + ", ".join(available_tasks()))
    p.add_argument("stage", nargs="?", help="stage: " + ", ".join((*STAGES, "all")))
    p.add_argument("--preset", default=None, help="config preset (default, quick, ...)")
    p.add_argument("--run", type=Path, default=None, help="run folder to create or continue")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue RUN_DIR from its checkpoints")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-h", "--help", action="store_true")
    return p


def _build_config(task: Task, args: argparse.Namespace, rest: list[str], run_path: Path | None):
    import tyro

    existing = run_path / "config.yaml" if run_path is not None else None
    if existing is not None and existing.exists() and args.preset is None:
        config = load_yaml(task.config_cls, existing)  # continue with the run's own config
    else:
        preset = args.preset or "default"
        if preset not in task.presets:
            raise UnknownNameError(
                f"unknown preset {preset!r} for task {task.name}; "
                f"available: {', '.join(task.presets)}"
            )
        config = task.presets[preset]()
    if rest:
        config = tyro.cli(task.config_cls, default=config, args=rest, prog=f"worldplan {task.name}")
    updates = {k: getattr(args, k) for k in ("seed", "device", "episodes")
               if getattr(args, k) is not None}
    if updates:
        config = from_dict(task.config_cls, {**to_dict(config), **updates})
    return config


def run_cli(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    if args.task is None or (args.help and args.stage is None):
        _parser().print_help()
        print("\ntasks:", ", ".join(available_tasks()))
        return 0 if args.help else 2
    task = load_task(args.task)
    if args.help:
        import tyro

        common = ("common options: --preset {" + ",".join(task.presets) + "}, --run DIR, "
                  "--resume DIR, --seed N, --device D, --episodes N, --debug. "
                  "Config fields below override the preset.")
        tyro.cli(task.config_cls, default=task.presets["default"](), args=["--help"],
                 prog=f"worldplan {task.name} {args.stage}",
                 description=f"{task.description.strip()}\n\n{common}")
        return 0
    stages = task.stage_order() if args.stage == "all" else [args.stage]
    for stage in stages:
        if stage not in task.stages:
            raise UnknownNameError(
                f"unknown stage {stage!r} for task {task.name}; available: "
                + ", ".join((*task.stage_order(), "all"))
            )
    if args.resume is not None and args.run is not None and args.resume != args.run:
        raise UnknownNameError("give --run or --resume, not two different folders")
    if args.resume is not None:
        run = Run.open(args.resume, task.name)
    elif args.run is not None:
        run = Run.open(args.run, task.name) if (args.run / "run.json").exists() else None
    else:
        run = None
    config = _build_config(task, args, rest, run.path if run is not None else None)
    if run is None:
        path = args.run or Run.default_path(task.name, args.preset or "default")
        run = Run.create(path, task.name)
    run.resume = args.resume is not None
    log.info("run folder: %s", run.path)
    log.info("config:\n%s", to_yaml(config))
    # A continued run keeps its old config.yaml until the new stages succeed.
    changed = run.config_path.exists() and run.config_path.read_text() != to_yaml(config)
    if not run.config_path.exists():
        save_yaml(config, run.config_path)
    try:
        for stage in stages:
            log.info("== %s %s ==", task.name, stage)
            task.stages[stage](config, run)
    finally:
        run.close()
    if changed:
        save_yaml(config, run.config_path)
    log.info("done: %s", run.path)
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    debug = "--debug" in argv
    try:
        code = run_cli(argv)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"worldplan: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("worldplan: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
