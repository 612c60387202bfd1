"""The package layering (docs/architecture.md), checked on every import statement.

Layers, lowest first: ``filters``; ``worldmodels``; ``planners``; the tasks in ``envs``;
``experiments`` (the command). A package imports only from the layers below it. The task
contracts ``envs.interface`` (the TaskModel protocol) and ``envs.maps`` (occupancy grids)
are shared by every layer, and so are the modules of the namespace package itself
(``worldplan/checkpoint.py``: crash-safe files and checkpoints), which sit below every layer
and import none of them. ``KNOWN_VIOLATIONS`` lists the edges still to be removed: it may
only shrink (a listed edge that no longer exists fails too).

Within the layers, a world model is used through its public calls only: no module reads a
private member (``model._name``) of a ``WorldModel`` class from outside, so what a task
needs of a model is a public method of the model (``ImageModel.features``,
``posterior``), not a reach into its internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("filters", "worldmodels", "planners", "envs", "experiments")
SHARED = ("envs.interface", "envs.maps")
# importer module -> imported module; each is a defect to remove, not a permission.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _project_imports(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "worldplan" and len(parts) > 1 and parts[1] in PACKAGES:
                found.add(".".join(parts[1:]))
    return found


def _allowed(importer: str, imported: str) -> bool:
    own, other = importer.split(".")[0], imported.split(".")[0]
    if own == other or any(imported == s or imported.startswith(s + ".") for s in SHARED):
        return True
    return PACKAGES.index(other) < PACKAGES.index(own)


def layering_violations(root: Path = ROOT) -> set[tuple[str, str]]:
    """Every (importer, imported) module pair that goes up or across the layers."""
    bad = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            importer = ".".join(path.relative_to(root).with_suffix("").parts)
            importer = importer.removesuffix(".__init__")
            for imported in _project_imports(path):
                # ``from a.b import c`` names both a.b and a.b.c; judge the module
                if not _allowed(importer, imported):
                    bad.add((importer, _module_of(imported, root)))
    return bad


def _module_of(name: str, root: Path) -> str:
    """``envs.highway.kinematics.step`` -> ``envs.highway.kinematics`` (the file)."""
    parts = name.split(".")
    while parts and not ((root / Path(*parts)).with_suffix(".py").is_file()
                         or (root / Path(*parts) / "__init__.py").is_file()):
        parts.pop()
    return ".".join(parts)


def test_no_package_imports_a_layer_above_it() -> None:
    new = layering_violations() - KNOWN_VIOLATIONS
    assert not new, "imports against the layering (docs/architecture.md):\n" + "\n".join(
        f"  {a} imports {b}" for a, b in sorted(new))


def test_base_modules_import_no_layer() -> None:
    """``worldplan/*.py`` (checkpoint, the entry point) is the base every layer may use."""
    base = [p for p in (ROOT / "worldplan").glob("*.py") if p.name != "__main__.py"]
    assert any(p.name == "checkpoint.py" for p in base)
    found = {(p.name, m) for p in base for m in _project_imports(p)}
    assert not found, f"the base modules import a layer: {sorted(found)}"


def test_known_violations_are_still_real() -> None:
    stale = KNOWN_VIOLATIONS - layering_violations()
    assert not stale, f"remove these fixed edges from KNOWN_VIOLATIONS: {sorted(stale)}"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "envs" / "truck.py").write_text("X = 1\n")
    (tmp_path / "planners" / "bad.py").write_text(
        "def f():\n    from worldplan.envs.truck import X\n    return X\n")
    (tmp_path / "planners" / "fine.py").write_text(
        "from worldplan.envs.interface import TaskModel\nfrom worldplan.filters import KF\n")
    assert layering_violations(tmp_path) == {("planners.bad", "envs.truck")}


def bare_imports(root: Path = ROOT, folders: tuple[str, ...] = (
        *PACKAGES, "worldplan", "tests", "benchmarks")) -> list[str]:
    """``file:line name`` of each import of a subpackage by its bare folder name
    (``import envs.highway``) or by a relative path (``from ..envs import x``). Both work in
    a source checkout but escape the layering check above, and the bare one breaks the
    installed distribution, where only ``worldplan.<package>`` exists."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    if name.startswith(".") or name.split(".")[0] in PACKAGES:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    return found


def test_every_project_import_goes_through_worldplan() -> None:
    bad = bare_imports()
    assert not bad, ("import these as worldplan.<package>...:\n  " + "\n  ".join(bad))


def test_bare_and_relative_imports_are_caught(tmp_path: Path) -> None:
    (tmp_path / "planners").mkdir()
    (tmp_path / "planners" / "bad.py").write_text(
        "import envs.highway\nfrom ..envs import maps\nfrom worldplan.envs import maps\n")
    assert bare_imports(tmp_path, ("planners",)) == [
        "planners/bad.py:1 envs.highway", "planners/bad.py:2 ..envs"]


def _model_private_names(root: Path) -> set[str]:
    """Private member names (``_name``: methods and ``self._name = ...`` attributes) of the
    ``WorldModel`` classes in ``worldmodels/``, subclasses of subclasses included."""
    classes: dict[str, tuple[list[str], set[str]]] = {}
    for path in (root / "worldmodels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                     for b in node.bases]
            names = set()
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(sub.name)
                elif (isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                      and isinstance(sub.value, ast.Name) and sub.value.id == "self"):
                    names.add(sub.attr)
            classes[node.name] = (bases, {n for n in names
                                          if n.startswith("_") and not n.startswith("__")})

    def is_model(name: str, seen: tuple[str, ...] = ()) -> bool:
        return name == "WorldModel" or (name in classes and name not in seen and any(
            is_model(b, (*seen, name)) for b in classes[name][0]))

    return {n for c, (_, names) in classes.items() if is_model(c) for n in names}


def private_model_reads(root: Path = ROOT) -> list[str]:
    """``file:line .name`` of each access to a world model's private member on anything but
    ``self``, ``cls`` or ``super()``, in every package."""
    private = _model_private_names(root)
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(node, ast.Attribute) or node.attr not in private:
                    continue
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                        and owner.func.id == "super"):
                    continue
                found.append(f"{path.relative_to(root)}:{node.lineno} .{node.attr}")
    return found


def test_no_module_reads_a_world_models_private_members() -> None:
    bad = private_model_reads()
    assert not bad, ("give the model a public method for these, or restructure:\n  "
                     + "\n  ".join(bad))


def test_private_model_reads_are_caught(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "worldmodels" / "m.py").write_text(
        "class WorldModel:\n    def _inner(self):\n        self._cache = 1\n"
        "        return self._cache\n\n\nclass Image(WorldModel):\n"
        "    def _features(self):\n        return super()._inner()\n\n\n"
        "class Helper:\n    def _private(self):\n        return 0\n")
    (tmp_path / "experiments" / "task.py").write_text(
        "def f(model, helper):\n    return model._features(), model._cache, helper._private()\n")
    assert sorted(private_model_reads(tmp_path)) == ["experiments/task.py:2 ._cache",
                                                     "experiments/task.py:2 ._features"]
