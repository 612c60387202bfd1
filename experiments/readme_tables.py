"""Regenerate the documentation's result tables from a run, so that they cannot drift::

    python -m worldplan.experiments.readme_tables truck --run runs/truck/<run> [--doc docs/truck.md]

Replaces the text between ``<!-- truck-results:begin -->`` and
``<!-- truck-results:end -->`` with the truck's results table built from the run's
metrics.json, followed by the run's stage times (wall time with the load average it was
measured at, and CPU time). ``--print`` writes the block to stdout instead.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from worldplan.checkpoint import atomic_write_text

TRUCK_ROWS = (
    ("bptt_emulator", "BPTT through the emulator"),
    ("bptt_truth", "BPTT through the true kinematics (reference)"),
    ("cascade", "cascade (pure pursuit + hitch-angle loop)"),
    ("lqr", "LQR about straight backing"),
    ("mpc_gradient", "gradient MPC through the emulator (pre-stabilised by the cascade)"),
    ("mpc_mppi", "MPPI through the emulator (pre-stabilised by the cascade)"),
    ("mpc_cem", "CEM through the emulator (pre-stabilised by the cascade)"),
    ("mpc_gradient_bptt", "gradient MPC through the emulator (around the BPTT controller)"),
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def stage_times(metrics: dict[str, Any]) -> str:
    """"collect 2 s, train-model 61 s, ... (wall, load 1.9-2.1; CPU 55 s in all)"."""
    stages = metrics.get("stages", {})
    if not stages:
        return "stage times: not recorded in this run"
    parts = [f"{name} {info['seconds']:.0f} s" for name, info in stages.items()
             if isinstance(info, dict) and "seconds" in info]
    loads = [info["loadavg"][0] for info in stages.values()
             if isinstance(info, dict) and info.get("loadavg")]
    cpu = sum(info.get("cpu_seconds", 0.0) for info in stages.values() if isinstance(info, dict))
    load = f"load average {min(loads):.1f}-{max(loads):.1f}" if loads else "load not recorded"
    return (f"Stage times of this run: {', '.join(parts)} (wall time, {load}); "
            f"{cpu:.0f} s of CPU in all.")


def truck_table(metrics: dict[str, Any]) -> str:
    """The truck's results table (markdown) from a run's metrics.json."""
    ev = metrics.get("evaluate")
    if not isinstance(ev, dict):
        raise ValueError("the run has no `evaluate` section in metrics.json")
    first = next((ev[k]["episodes"] for k, _ in TRUCK_ROWS if k in ev), 0)
    lines = ["| method (same seeded starts) | docked (1 unit, 10 deg) | strict (0.5 unit, 5 deg) "
             "| final position error | final angle error | steps to dock | jackknifed |",
             "|---|---|---|---|---|---|---|"]
    for key, label in TRUCK_ROWS:
        if key not in ev:
            continue
        m = ev[key]
        if m["episodes"] != first:
            label += f" (first {m['episodes']} starts)"
        lines.append(f"| {label} | {_pct(m['success_rate'])} | {_pct(m['strict_success_rate'])} "
                     f"| {_num(m['final_position_error'])} "
                     f"| {_num(m['final_angle_error_deg'])} deg "
                     f"| {_num(m.get('steps_to_dock'))} | {_pct(m.get('jackknife_rate'))} |")
    setup = ev.get("_setup", {})
    lines.append("")
    lines.append(f"{first:,} starts, seed {setup.get('seed', '?')}. {stage_times(metrics)}")
    return "\n".join(lines)


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with the lines between ``<!-- name:begin -->`` and ``<!-- name:end -->``
    replaced by ``block``."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> block found")
    return pattern.sub(lambda m: m.group(1) + block + m.group(2), text, count=1)


# task -> (marker name, table builder, the page that holds the table)
TABLES = {"truck": ("truck-results", truck_table, Path("docs/truck.md"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("::")[0])
    parser.add_argument("task", choices=sorted(TABLES))
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--doc", "--readme", dest="doc", type=Path, default=None,
                        help="the page to update (default: the task's page in docs/)")
    parser.add_argument("--print", action="store_true", help="print the block only")
    args = parser.parse_args(argv)
    name, build, page = TABLES[args.task]
    doc = args.doc or page
    block = build(json.loads((args.run / "metrics.json").read_text()))
    if args.print:
        print(block)
        return
    atomic_write_text(doc, replace_block(doc.read_text(), name, block))
    print(f"{doc}: {name} regenerated from {args.run}")


if __name__ == "__main__":
    main()
