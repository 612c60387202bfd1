"""The summary table every task ends with, built from metrics.json alone.

One row per method (or per evaluation, for tasks that evaluate one thing) of every
evaluation record: its success rate, its key errors or returns, and its time. Numbers are
printed with 3 significant digits, rates as percentages. ``worldplan <task> show --run R
[--run R2]`` prints the same table again, for one run or two side by side.
"""

from __future__ import annotations

import math
from typing import Any

# Columns, in the order shown, when a row has them: (metrics key, header, kind).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("success_rate", "success", "pct"),
    ("strict_success_rate", "strict", "pct"),
    ("collision_rate", "collision", "pct"),
    ("final_position_error", "pos err", "num"),
    ("final_angle_error_deg", "angle err deg", "num"),
    ("mean_distance_m", "distance m", "num"),
    ("mean_uncertainty", "mean U", "num"),
    ("mean_return", "return", "num"),
    ("std_return", "return std", "num"),
    ("angle_rmse", "angle rmse", "num"),
    ("rate_rmse", "rate rmse", "num"),
    ("mean_localisation_error_m", "loc err m", "num"),
    ("final_position_error_m", "final err m", "num"),
    ("plan_ms_per_step_batch", "plan ms/step", "num"),
    ("seconds", "seconds", "num"),
    ("episodes", "episodes", "int"),
)
# Sections that hold results of an evaluation (a record "evaluate-<settings>" included).
RESULT_SECTIONS = ("evaluate", "pendulum", "localisation")


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and any(k in value for k, _h, _kind in COLUMNS)


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"record", "method", <metric keys>..., "stage_seconds"}`` of every
    evaluation record in ``metrics`` (a parsed metrics.json)."""
    rows: list[dict[str, Any]] = []
    stages = metrics.get("stages", {}) if isinstance(metrics.get("stages"), dict) else {}
    for section, values in metrics.items():
        base = section.split("-", 1)[0]
        if base not in RESULT_SECTIONS or not isinstance(values, dict):
            continue
        record = "evaluate" + section[len(base):]
        timing = stages.get(record, {}) if isinstance(stages.get(record), dict) else {}
        methods = {k: v for k, v in values.items() if not k.startswith("_") and _is_metrics(v)}
        if not methods and _is_metrics(values):
            name = "/".join(str(values[k]) for k in ("env", "planner", "model", "tracker")
                            if isinstance(values.get(k), str)) or base
            methods = {name: values}
        for name, m in methods.items():
            row = {"record": section, "method": name}
            row.update({k: m[k] for k, _h, _kind in COLUMNS if k in m})
            if timing:
                row["stage_seconds"] = timing.get("seconds")
                row["stage_cpu_seconds"] = timing.get("cpu_seconds")
            rows.append(row)
    return rows


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return str(int(value))
    return f"{value:.3g}"


def format_table(runs: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """One table of the rows of one run, or of two runs side by side (a ``run`` column
    says which; rows of the same record and method follow each other)."""
    all_rows = [(i, r) for i, (_name, rows) in enumerate(runs) for r in rows]
    if not all_rows:
        return "no evaluation results in " + ", ".join(name for name, _rows in runs)
    cols = [c for c in COLUMNS if any(c[0] in r for _i, r in all_rows)]
    header = ["record", "method"] + (["run"] if len(runs) > 1 else []) + [h for _k, h, _t in cols]
    header.append("stage time (CPU)")
    order = sorted(all_rows, key=lambda ir: (ir[1]["record"], ir[1]["method"], ir[0]))
    if len(runs) == 1:
        order = all_rows
    lines = []
    for i, r in order:
        cells = [r["record"], r["method"]] + ([chr(ord("A") + i)] if len(runs) > 1 else [])
        cells += [_fmt(r.get(k), kind) for k, _h, kind in cols]
        if r.get("stage_seconds") is not None:
            cells.append(f"{r['stage_seconds']:.0f} s ({r.get('stage_cpu_seconds') or 0:.0f} s)")
        else:
            cells.append("-")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                         for j, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(header), line(["-" * w for w in widths])] + [line(c) for c in lines]
    if len(runs) > 1:
        out += [f"run {chr(ord('A') + i)}: {name}" for i, (name, _rows) in enumerate(runs)]
    return "\n".join(out)
