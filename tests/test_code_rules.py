"""Code rules of docs/architecture.md that a reader relies on, checked on every module of
the installed packages: a project import inside a function says why it is there, and a
module over 400 lines says at its top why it is one module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worldplan", "filters", "worldmodels", "planners", "envs", "experiments")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def unexplained_lazy_imports(path: Path) -> list[str]:
    """``file:line module`` of each ``worldplan`` import inside a function without a
    comment on its line or on the line above it."""
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if not any(n.startswith("worldplan") for n in names):
                continue
            here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
            if "#" not in here and not above.startswith("#"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {names[0]}")
    return sorted(set(found))


def test_project_imports_inside_functions_say_why() -> None:
    bad = [hit for p in _modules() for hit in unexplained_lazy_imports(p)]
    assert not bad, ("import these at the top of the module, or say on the line above why "
                     "they must wait (an optional dependency, a cycle):\n  " + "\n  ".join(bad))


def test_long_modules_say_why_they_are_one() -> None:
    bad = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Length:" not in doc:
                bad.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not bad, ("split these, or add a 'Length: ...' paragraph to the module docstring "
                     "saying why they are one module:\n  " + "\n  ".join(bad))


def test_the_checks_catch_a_violation(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from worldplan.filters import KalmanFilter\n"
                   "    return KalmanFilter\n\n\ndef g():\n"
                   "    # lazy: a reason\n    from worldplan.filters import KalmanFilter\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert unexplained_lazy_imports(mod) == ["m.py:2 worldplan.filters"]
    finally:
        ROOT = root
